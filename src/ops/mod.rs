//! The matrix types and the low-level ops the models are built from: GEMMs (`matmul`,
//! `packed` for reduced precision), run-time SIMD dispatch (`simd`), the fused LSTM cell
//! (`cell`), dropout from a stream checkpoints can save (`dropout`) and attention as one
//! tape node (`attention`). Model structure (which layer feeds which, parameter names) lives
//! in `crate::models`.

pub mod attention;
pub mod cell;
pub mod dropout;
pub mod matmul;
pub mod packed;
pub mod simd;

use dfdx::prelude::*;

/// A runtime-shaped matrix / vector parameter or activation on the CPU (sizes come from the
/// config at run time, not from the type).
pub type Matrix<T = NoneTape> = Tensor<(usize, usize), f32, Cpu, T>;
pub type Vector<T = NoneTape> = Tensor<(usize,), f32, Cpu, T>;
