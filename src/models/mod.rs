//! Models: the BERT teacher and the Bi-LSTM student, each a struct with a constructor and a
//! `forward`, built from the layers here and the ops in `crate::ops`.

pub mod bert;
pub mod bert_inference;
pub mod bilstm;
pub mod layers;
pub mod lstm;
pub mod student_card;
