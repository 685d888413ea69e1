//! distill: distil a fine-tuned BERT teacher into a small Bi-LSTM student.
//!
//! The modules follow the pipeline: experiment config → data/tasks → tokenization and
//! vocab → word embeddings → models → optimizers → training stages → metrics and reports.

pub mod augment;
pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod embeddings;
pub mod metrics;
pub mod models;
pub mod optim;
pub mod report;
pub mod tokenize;
pub mod train;
