//! Models: the Bi-LSTM student (and its fused LSTM layer).

pub mod bert;
pub mod bilstm;
pub mod cell;
pub mod layers;
pub mod lstm;
pub mod matmul;
