//! distill: distil a fine-tuned BERT teacher into a small Bi-LSTM student.
//!
//! The modules follow the pipeline: experiment config → data/tasks → tokenization and
//! vocab → word embeddings → models → optimizers → training stages → metrics and reports
//! (CSV, SVG plots, the paper table) → sweeps over grids → predicting with a saved model.

pub mod augment;
pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod embeddings;
pub mod gpu;
pub mod import_e5;
pub mod metrics;
pub mod models;
pub mod optim;
pub mod plots;
pub mod predict;
pub mod report;
pub mod sweep;
pub mod table;
pub mod tokenize;
pub mod train;
