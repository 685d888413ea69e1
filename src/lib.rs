//! distill: distil a fine-tuned BERT teacher into a small Bi-LSTM student.
//!
//! The modules follow the pipeline: experiment config → data/tasks → tokenization and
//! vocab → augmentation → encoded model input → word embeddings → models → losses and
//! optimizers → the device seam (`backend`: CPU or GPU) → inference over sets → training
//! stages (one loop) → metrics and reports (CSV, SVG plots, the paper table) → sweeps over
//! grids → predicting with a saved model.

pub mod augment;
pub mod backend;
pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
pub mod embeddings;
pub mod encode;
pub mod files;
pub mod gpu;
pub mod import_e5;
pub mod inference;
pub mod loss;
pub mod metrics;
pub mod models;
pub mod ops;
pub mod optim;
pub mod plots;
pub mod predict;
pub mod progress;
pub mod report;
pub mod reproduce;
pub mod sweep;
pub mod table;
pub mod tokenize;
pub mod train;
