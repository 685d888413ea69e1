//! Building blocks shared by the models: `Linear` and `LayerNorm` over runtime-shaped
//! dfdx tensors, with PyTorch's layouts and initialisation.

use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::Rng;

use super::lstm::{Matrix, Vector};

/// `y = x · weightᵀ + bias`, with PyTorch's `[out, in]` weight.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Matrix,
    pub bias: Vector,
}

impl Linear {
    /// PyTorch's default init: uniform(±1/√in).
    pub fn new(dev: &Cpu, inputs: usize, outputs: usize, rng: &mut StdRng) -> Linear {
        let k = 1.0 / (inputs as f32).sqrt();
        Linear {
            weight: uniform(dev, (outputs, inputs), k, rng),
            bias: uniform(dev, (outputs,), k, rng),
        }
    }

    pub fn forward<T: Tape<f32, Cpu>>(&self, x: Matrix<T>) -> Matrix<T> {
        let rows = x.shape().0;
        let outputs = self.weight.shape().0;
        let bias = self.bias.clone().broadcast_like::<_, Axis<0>>(&(rows, outputs));
        x.matmul(self.weight.clone().permute::<_, Axes2<1, 0>>()) + bias
    }
}

pub fn uniform<S: Shape>(dev: &Cpu, shape: S, k: f32, rng: &mut StdRng) -> Tensor<S, f32, Cpu> {
    let values: Vec<f32> = (0..shape.num_elements()).map(|_| rng.gen_range(-k..=k)).collect();
    dev.tensor_from_vec(values, shape)
}

/// `LayerNorm` over the last axis of `[rows, D]`, with an explicit epsilon (BERT uses 1e-12,
/// not dfdx's default 1e-5).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Vector,
    pub bias: Vector,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(dev: &Cpu, dim: usize, eps: f64) -> LayerNorm {
        LayerNorm { weight: dev.ones_like(&(dim,)), bias: dev.zeros_like(&(dim,)), eps }
    }

    pub fn forward<T: Tape<f32, Cpu>>(&self, x: Matrix<T>) -> Matrix<T> {
        let shape = *x.shape();
        let normed = x.normalize::<Axis<1>>(self.eps);
        normed * self.weight.clone().broadcast_like::<_, Axis<0>>(&shape)
            + self.bias.clone().broadcast_like::<_, Axis<0>>(&shape)
    }
}

/// A mutable view of one parameter, for optimizers and checkpoints.
pub enum ParamMut<'a> {
    Matrix(&'a mut Matrix),
    Vector(&'a mut Vector),
}

impl ParamMut<'_> {
    pub fn dims(&self) -> Vec<usize> {
        match self {
            ParamMut::Matrix(t) => vec![t.shape().0, t.shape().1],
            ParamMut::Vector(t) => vec![t.shape().0],
        }
    }

    pub fn values(&self) -> Vec<f32> {
        match self {
            ParamMut::Matrix(t) => t.as_vec(),
            ParamMut::Vector(t) => t.as_vec(),
        }
    }

    pub fn set_values(&mut self, values: &[f32]) {
        match self {
            ParamMut::Matrix(t) => t.copy_from(values),
            ParamMut::Vector(t) => t.copy_from(values),
        }
    }

    /// This parameter's gradient (zeros if it did not take part in the pass).
    pub fn grad<'g>(&self, grads: &'g mut Gradients<f32, Cpu>) -> &'g mut [f32] {
        match self {
            ParamMut::Matrix(t) => grads.get_or_alloc_mut(&**t).expect("cpu alloc"),
            ParamMut::Vector(t) => grads.get_or_alloc_mut(&**t).expect("cpu alloc"),
        }
    }
}

impl Linear {
    /// Appends `PREFIX.weight` and `PREFIX.bias`.
    pub fn params_mut<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, ParamMut<'a>)>) {
        out.push((format!("{prefix}.weight"), ParamMut::Matrix(&mut self.weight)));
        out.push((format!("{prefix}.bias"), ParamMut::Vector(&mut self.bias)));
    }
}

impl LayerNorm {
    /// Appends `PREFIX.weight` and `PREFIX.bias`.
    pub fn params_mut<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, ParamMut<'a>)>) {
        out.push((format!("{prefix}.weight"), ParamMut::Vector(&mut self.weight)));
        out.push((format!("{prefix}.bias"), ParamMut::Vector(&mut self.bias)));
    }
}
