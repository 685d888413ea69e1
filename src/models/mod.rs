//! Models: the BERT teacher and the Bi-LSTM student, with the fused ops they use.

pub mod attention;
pub mod bert;
pub mod bert_inference;
pub mod bilstm;
pub mod cell;
pub mod layers;
pub mod lstm;
pub mod matmul;
pub mod packed;
pub mod simd;
