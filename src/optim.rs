//! Optimizers over runtime-shaped dfdx tensors: Adadelta (dfdx has none) and Adam/AdamW,
//! with PyTorch's update rules, plus global gradient-norm clipping and the learning-rate
//! schedule. A new optimizer is a new `OptimizerName` and an arm in [`Optimizer::step`]
//! (and in `GpuStudent::update` for the GPU).

use dfdx::prelude::*;
use rayon::prelude::*;

use crate::config::OptimizerName;
use crate::models::layers::{ParamMut, RowGrads};

#[derive(Debug, Clone, Copy)]
pub struct OptimizerConfig {
    pub kind: OptimizerName,
    pub lr: f32,
    /// Adadelta's decay (PyTorch default 0.9; the seed used 0.95).
    pub rho: f32,
    pub eps: f32,
    pub beta1: f32,
    pub beta2: f32,
    /// Decoupled weight decay (AdamW), applied to parameters not excluded by
    /// [`Optimizer::exclude_from_decay`].
    pub weight_decay: f32,
}

impl OptimizerConfig {
    pub fn new(kind: OptimizerName, lr: f64) -> OptimizerConfig {
        match kind {
            OptimizerName::Adadelta => {
                OptimizerConfig { kind, lr: lr as f32, rho: 0.95, eps: 1e-6, beta1: 0.0, beta2: 0.0, weight_decay: 0.0 }
            }
            OptimizerName::Adam => {
                OptimizerConfig { kind, lr: lr as f32, rho: 0.0, eps: 1e-8, beta1: 0.9, beta2: 0.999, weight_decay: 0.0 }
            }
        }
    }
}

/// Per-parameter state: a master copy of the values, and Adadelta's (square avg, delta avg)
/// or Adam's (m, v).
struct ParamState {
    values: Vec<f32>,
    s1: Vec<f32>,
    s2: Vec<f32>,
    /// Sparse Adadelta only: the step at which each row was last updated.
    row_step: Vec<u64>,
}

/// One parameter's state in a checkpoint: the two moment buffers, and (sparse Adadelta) the
/// step each row was last updated at.
pub type ParamMoments<'a> = (&'a [f32], &'a [f32], &'a [u64]);

pub struct Optimizer {
    cfg: OptimizerConfig,
    state: Vec<ParamState>,
    steps: u64,
    no_decay: Vec<bool>,
}

const CHUNK: usize = 1 << 14;

impl Optimizer {
    pub fn new(cfg: OptimizerConfig) -> Optimizer {
        Optimizer { cfg, state: Vec::new(), steps: 0, no_decay: Vec::new() }
    }

    /// AdamW with PyTorch's defaults (betas 0.9/0.999, eps 1e-8) and `weight_decay`.
    pub fn adamw(lr: f64, weight_decay: f64) -> Optimizer {
        let mut cfg = OptimizerConfig::new(OptimizerName::Adam, lr);
        cfg.eps = 1e-8;
        cfg.weight_decay = weight_decay as f32;
        Optimizer::new(cfg)
    }

    /// Marks parameters that get no weight decay (BERT recipes exclude biases and LayerNorm).
    pub fn exclude_from_decay(&mut self, no_decay: Vec<bool>) {
        self.no_decay = no_decay;
    }

    /// Sets the learning rate for the next steps (for schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr as f32;
    }

    /// Backpropagates `loss`, clips the global gradient norm to `max_grad_norm` when that is
    /// positive, and takes one step on `params` (see [`Optimizer::step`]); returns the loss.
    /// `row_grads` gives, from the gradients, the row gradients of the lookup tables among
    /// `params` (by position; `None` or missing for the others). A non-finite loss makes no
    /// update (the caller stops with advice).
    pub fn minimize(
        &mut self,
        loss: Tensor<(), f32, Cpu, OwnedTape<f32, Cpu>>,
        mut params: Vec<(String, ParamMut<'_>)>,
        trainable: &[bool],
        row_grads: impl FnOnce(&Gradients<f32, Cpu>) -> Vec<Option<RowGrads>>,
        max_grad_norm: f32,
    ) -> f64 {
        let loss_value = loss.array() as f64;
        if loss_value.is_finite() {
            let mut grads = loss.backward();
            let mut rows = row_grads(&grads);
            if max_grad_norm > 0.0 {
                clip_grad_norm(&params, &mut grads, &mut rows, max_grad_norm);
            }
            self.step(&mut params, trainable, &rows, &mut grads);
        }
        loss_value
    }

    /// The state a resumed run needs, for a checkpoint: the step count and, per parameter,
    /// the two moment buffers and (sparse Adadelta) the step each row was last updated at.
    /// Empty before the first step. The master values are the parameters' own.
    pub fn moments(&self) -> (u64, Vec<ParamMoments<'_>>) {
        (self.steps, self.state.iter().map(|st| (st.s1.as_slice(), st.s2.as_slice(), st.row_step.as_slice())).collect())
    }

    /// Continues from a checkpoint's [`Optimizer::moments`], the parameters already holding
    /// the checkpoint's values.
    pub fn restore_moments(&mut self, steps: u64, params: &[(String, ParamMut<'_>)], moments: Vec<(Vec<f32>, Vec<f32>, Vec<u64>)>) {
        self.steps = steps;
        self.state = params
            .iter()
            .zip(moments)
            .map(|((_, p), (s1, s2, row_step))| ParamState { values: p.values(), s1, s2, row_step })
            .collect();
    }

    /// Applies one update to every parameter whose `trainable` flag is set.
    ///
    /// `rows[i]`, if given, is the gradient of table `i` over the only rows where it can be
    /// non-zero (the embedding rows of the batch's tokens). Adadelta then updates just those
    /// rows and applies the skipped steps' decay lazily: with a zero gradient a step leaves
    /// the value unchanged and multiplies both averages by rho, so the result is the dense
    /// update (up to rounding: rho^k is one multiplication, not k). Adam moves values even on
    /// a zero gradient, so it stays dense.
    pub fn step(
        &mut self,
        params: &mut [(String, ParamMut<'_>)],
        trainable: &[bool],
        rows: &[Option<RowGrads>],
        grads: &mut Gradients<f32, Cpu>,
    ) {
        if self.state.is_empty() {
            self.state = params
                .iter()
                .map(|(_, p)| {
                    let values = p.values();
                    let n = values.len();
                    ParamState { values, s1: vec![0f32; n], s2: vec![0f32; n], row_step: Vec::new() }
                })
                .collect();
        }
        self.steps += 1;
        let cfg = self.cfg;
        let steps = self.steps;
        for (i, ((_, param), st)) in params.iter_mut().zip(self.state.iter_mut()).enumerate() {
            if !trainable[i] {
                continue;
            }
            let sparse = rows.get(i).and_then(Option::as_ref);
            let decay = cfg.weight_decay > 0.0 && !self.no_decay.get(i).copied().unwrap_or(false);
            if decay {
                let keep = 1.0 - cfg.lr * cfg.weight_decay;
                st.values.par_chunks_mut(CHUNK).for_each(|p| p.iter_mut().for_each(|v| *v *= keep));
            }
            match (cfg.kind, sparse) {
                (OptimizerName::Adadelta, Some(sparse)) => {
                    let width = param.dims()[1];
                    if st.row_step.is_empty() {
                        st.row_step = vec![0; st.values.len() / width];
                    }
                    // The batch's rows (ascending, distinct), each with its state, updated in parallel.
                    let mut wanted = sparse.rows.iter().zip(sparse.grad.chunks_exact(width)).peekable();
                    let mut batch_rows = Vec::with_capacity(sparse.rows.len());
                    let state_rows = st.values.chunks_exact_mut(width).zip(st.s1.chunks_exact_mut(width)).zip(st.s2.chunks_exact_mut(width));
                    for (r, (row, last_step)) in state_rows.zip(st.row_step.iter_mut()).enumerate() {
                        if let Some((_, grad)) = wanted.next_if(|(&w, _)| w == r) {
                            batch_rows.push((row, last_step, grad));
                        }
                    }
                    batch_rows.into_par_iter().for_each(|(((values, square_avg), delta_avg), last_step, grad)| {
                        let skipped = (steps - *last_step - 1) as i32;
                        if skipped > 0 {
                            let decay = cfg.rho.powi(skipped);
                            square_avg.iter_mut().for_each(|v| *v *= decay);
                            delta_avg.iter_mut().for_each(|v| *v *= decay);
                        }
                        *last_step = steps;
                        adadelta(values, grad, square_avg, delta_avg, cfg);
                    });
                    if decay {
                        param.set_values(&st.values);
                    } else {
                        param.set_rows(&st.values, &sparse.rows);
                    }
                }
                (kind, sparse) => {
                    let dense;
                    let grad: &[f32] = match sparse {
                        Some(sparse) => {
                            let width = param.dims()[1];
                            dense = sparse.to_dense(st.values.len() / width, width);
                            &dense
                        }
                        None => param.grad(grads),
                    };
                    st.values
                        .par_chunks_mut(CHUNK)
                        .zip(grad.par_chunks(CHUNK))
                        .zip(st.s1.par_chunks_mut(CHUNK).zip(st.s2.par_chunks_mut(CHUNK)))
                        .for_each(|((p, g), (a, b))| match kind {
                            OptimizerName::Adadelta => adadelta(p, g, a, b, cfg),
                            OptimizerName::Adam => adam(p, g, a, b, cfg, steps as i32),
                        });
                    param.set_values(&st.values);
                }
            }
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

/// Scales all gradients so that their global L2 norm is at most `max_norm`; returns the norm
/// before. A table with row gradients (`rows[i]`) counts those rows, the only non-zero ones.
pub fn clip_grad_norm(
    params: &[(String, ParamMut<'_>)],
    grads: &mut Gradients<f32, Cpu>,
    rows: &mut [Option<RowGrads>],
    max_norm: f32,
) -> f32 {
    let mut total = 0f64;
    for (i, (_, p)) in params.iter().enumerate() {
        let grad: &[f32] = match rows.get(i).and_then(Option::as_ref) {
            Some(sparse) => &sparse.grad,
            None => p.grad(grads),
        };
        total += grad.iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>();
    }
    let norm = total.sqrt() as f32;
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for (i, (_, p)) in params.iter().enumerate() {
            let grad: &mut [f32] = match rows.get_mut(i).and_then(Option::as_mut) {
                Some(sparse) => &mut sparse.grad,
                None => p.grad(grads),
            };
            grad.par_iter_mut().for_each(|g| *g *= scale);
        }
    }
    norm
}

/// Linear warm-up from 0 to `peak` over `warmup` steps, then linear decay to 0 at `total`.
/// `step` counts from 1 (the first update already gets a non-zero rate).
pub fn warmup_linear_lr(peak: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step <= warmup {
        peak * step as f64 / warmup.max(1) as f64
    } else {
        peak * (total.saturating_sub(step)) as f64 / (total - warmup).max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::layers::Embedding;
    use crate::ops::Matrix;

    #[test]
    fn row_gradients_sum_repeated_ids_and_list_rows_ascending() {
        let sparse = RowGrads::from_lookup(&[2, 0, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2);
        assert_eq!(sparse.rows, vec![0, 2]);
        assert_eq!(sparse.grad, vec![3.0, 4.0, 6.0, 8.0]);
        assert_eq!(sparse.to_dense(3, 2), vec![3.0, 4.0, 0.0, 0.0, 6.0, 8.0]);
    }

    /// A table updated only at its batch's rows (the steps a row sits out applied lazily)
    /// follows the dense Adadelta update of the same gradients, and rows outside the batch are
    /// not written.
    #[test]
    fn sparse_adadelta_follows_the_dense_update() {
        let dev = Cpu::default();
        let (rows, dim) = (6, 3);
        let start: Vec<f32> = (0..rows * dim).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut table = Embedding::new(start.clone(), rows, dim);
        let mut dense: Matrix = dev.tensor_from_vec(start, (rows, dim));
        let mut sparse_optimizer = Optimizer::new(OptimizerConfig::new(OptimizerName::Adadelta, 1.0));
        let mut dense_optimizer = Optimizer::new(OptimizerConfig::new(OptimizerName::Adadelta, 1.0));
        let batches = [vec![0, 2, 2, 5], vec![1, 5], vec![3], vec![0, 1, 2, 3, 4, 5], vec![4, 0], vec![2]];
        for (step, ids) in batches.iter().enumerate() {
            let d_rows: Vec<f32> = (0..ids.len() * dim).map(|i| ((i + 7 * step) as f32 * 0.91).cos()).collect();
            let sparse = RowGrads::from_lookup(ids, &d_rows, dim);
            let dense_grad = sparse.to_dense(rows, dim);
            let before = table.weight.clone();
            let mut no_grads = Gradients::<f32, Cpu>::leaky();
            sparse_optimizer.step(&mut [("t".into(), ParamMut::Embedding(&mut table))], &[true], &[Some(sparse)], &mut no_grads);
            let mut grads = Gradients::<f32, Cpu>::leaky();
            grads.get_or_alloc_mut(&dense).unwrap().copy_from_slice(&dense_grad);
            dense_optimizer.step(&mut [("t".into(), ParamMut::Matrix(&mut dense))], &[true], &[None], &mut grads);
            for (i, (got, want)) in table.weight.iter().zip(dense.as_vec()).enumerate() {
                assert!((got - want).abs() <= 1e-6 * (1.0 + want.abs()), "step {step}, value {i}: {got} vs {want}");
                if !ids.contains(&(i / dim)) {
                    assert_eq!(*got, before[i], "step {step}: row {} is outside the batch", i / dim);
                }
            }
        }
    }
}
