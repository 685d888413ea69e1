//! Models: the Bi-LSTM student (and its fused LSTM layer).

pub mod bilstm;
pub mod cell;
pub mod lstm;
pub mod matmul;
