//! Optimizers over runtime-shaped dfdx tensors: Adadelta (dfdx has none) and Adam,
//! with PyTorch's update rules, plus global gradient-norm clipping.

use dfdx::prelude::*;
use rayon::prelude::*;

use crate::config::OptimizerName;
use crate::models::bilstm::ParamMut;

#[derive(Debug, Clone, Copy)]
pub struct OptimizerConfig {
    pub kind: OptimizerName,
    pub lr: f32,
    /// Adadelta's decay (PyTorch default 0.9; the seed used 0.95).
    pub rho: f32,
    pub eps: f32,
    pub beta1: f32,
    pub beta2: f32,
}

impl OptimizerConfig {
    pub fn new(kind: OptimizerName, lr: f64) -> OptimizerConfig {
        match kind {
            OptimizerName::Adadelta => {
                OptimizerConfig { kind, lr: lr as f32, rho: 0.95, eps: 1e-6, beta1: 0.0, beta2: 0.0 }
            }
            OptimizerName::Adam => {
                OptimizerConfig { kind, lr: lr as f32, rho: 0.0, eps: 1e-8, beta1: 0.9, beta2: 0.999 }
            }
        }
    }
}

/// Per-parameter state: Adadelta (square avg, delta avg) or Adam (m, v).
pub struct Optimizer {
    cfg: OptimizerConfig,
    state: Vec<(Vec<f32>, Vec<f32>)>,
    steps: u64,
}

const CHUNK: usize = 1 << 14;

impl Optimizer {
    pub fn new(cfg: OptimizerConfig) -> Optimizer {
        Optimizer { cfg, state: Vec::new(), steps: 0 }
    }

    /// Applies one update to every parameter whose `trainable` flag is set.
    pub fn step(&mut self, params: &mut [(String, ParamMut<'_>)], trainable: &[bool], grads: &mut Gradients<f32, Cpu>) {
        if self.state.is_empty() {
            self.state = params
                .iter()
                .map(|(_, p)| {
                    let n = p.dims().iter().product();
                    (vec![0f32; n], vec![0f32; n])
                })
                .collect();
        }
        self.steps += 1;
        let cfg = self.cfg;
        let steps = self.steps as i32;
        for (((_, param), (s1, s2)), &train) in params.iter_mut().zip(self.state.iter_mut()).zip(trainable) {
            if !train {
                continue;
            }
            let grad = param.grad(grads);
            let mut values = param.values();
            values
                .par_chunks_mut(CHUNK)
                .zip(grad.par_chunks(CHUNK))
                .zip(s1.par_chunks_mut(CHUNK).zip(s2.par_chunks_mut(CHUNK)))
                .for_each(|((p, g), (a, b))| match cfg.kind {
                    OptimizerName::Adadelta => adadelta(p, g, a, b, cfg),
                    OptimizerName::Adam => adam(p, g, a, b, cfg, steps),
                });
            param.set_values(&values);
        }
    }
}

fn adadelta(p: &mut [f32], g: &[f32], square_avg: &mut [f32], delta_avg: &mut [f32], cfg: OptimizerConfig) {
    let (rho, eps, lr) = (cfg.rho, cfg.eps, cfg.lr);
    for i in 0..p.len() {
        let gi = g[i];
        square_avg[i] = rho * square_avg[i] + (1.0 - rho) * gi * gi;
        let delta = (delta_avg[i] + eps).sqrt() / (square_avg[i] + eps).sqrt() * gi;
        delta_avg[i] = rho * delta_avg[i] + (1.0 - rho) * delta * delta;
        p[i] -= lr * delta;
    }
}

fn adam(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], cfg: OptimizerConfig, step: i32) {
    let (b1, b2) = (cfg.beta1, cfg.beta2);
    let correction1 = 1.0 - b1.powi(step);
    let correction2 = 1.0 - b2.powi(step);
    let step_size = cfg.lr / correction1;
    for i in 0..p.len() {
        let gi = g[i];
        m[i] = b1 * m[i] + (1.0 - b1) * gi;
        v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
        let denom = (v[i] / correction2).sqrt() + cfg.eps;
        p[i] -= step_size * m[i] / denom;
    }
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(params: &[(String, ParamMut<'_>)], grads: &mut Gradients<f32, Cpu>, max_norm: f32) -> f32 {
    let mut total = 0f64;
    for (_, p) in params {
        total += p.grad(grads).iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>();
    }
    let norm = total.sqrt() as f32;
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for (_, p) in params {
            p.grad(grads).par_iter_mut().for_each(|g| *g *= scale);
        }
    }
    norm
}
