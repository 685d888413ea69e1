//! The one training loop, shared by the teacher and student stages: epochs of batches,
//! evaluation on dev at the end of each epoch (and every `eval_every` steps), the best
//! evaluation's weights kept as the stage's checkpoint, a metrics row per evaluation and a
//! progress line. A stage supplies only its [`Trainee`] (how to take a step, evaluate and
//! save) and its batch order. Checkpoints and resume inside a stage belong here.

use std::time::Instant;

use anyhow::{bail, Result};

use crate::config::TrainingSettings;
use crate::inference::Evaluation;
use crate::metrics::Metrics;
use crate::progress::progress_bar;
use crate::report::MetricsLog;

/// A model being trained by [`run_training_loop`].
pub trait Trainee {
    /// One optimizer step on the training rows `batch` (`step` counts from 1); returns the
    /// batch's loss. A non-finite loss must leave the weights as they were.
    fn train_step(&mut self, batch: &[usize], step: usize) -> Result<f64>;
    /// Dev-set evaluation of the current weights.
    fn evaluate(&mut self) -> Result<Evaluation>;
    /// Saves the current weights as the stage's best checkpoint.
    fn save_best(&mut self) -> Result<()>;
}

pub struct LoopSettings<'a> {
    /// The stage's name in the reports and progress lines (and its config section).
    pub stage: &'a str,
    pub epochs: usize,
    /// Batches per epoch (for the progress bar and the step count).
    pub steps_per_epoch: usize,
    /// Also evaluate every this many steps (0: at epoch ends only).
    pub eval_every: usize,
    /// What to change when the loss stops being finite, for the error message.
    pub advice: String,
}

impl<'a> LoopSettings<'a> {
    /// The loop of `stage` trained with its section's `training` settings over `rows` rows.
    pub fn new(stage: &'a str, training: &TrainingSettings, rows: usize) -> LoopSettings<'a> {
        let advice = if training.max_grad_norm > 0.0 {
            format!("lower {stage}.lr")
        } else {
            format!("lower {stage}.lr or set {stage}.max_grad_norm")
        };
        LoopSettings {
            stage,
            epochs: training.epochs,
            steps_per_epoch: rows.div_ceil(training.batch_size),
            eval_every: training.eval_every,
            advice,
        }
    }
}

/// What a finished loop kept.
pub struct LoopOutcome {
    /// Epoch and dev metrics of the kept (best) evaluation.
    pub best_epoch: usize,
    pub dev: Metrics,
    /// Seconds spent in training steps (evaluation not counted), and rows trained on.
    pub train_time_s: f64,
    pub sentences_seen: usize,
}

/// Trains `trainee` for `settings.epochs` epochs; `epoch_batches` gives each epoch's batches
/// of training-row indices. Keeps the checkpoint of the best dev accuracy (the first of ties).
pub fn run_training_loop(
    settings: &LoopSettings,
    trainee: &mut impl Trainee,
    mut epoch_batches: impl FnMut() -> Vec<Vec<usize>>,
    log: &mut MetricsLog,
) -> Result<LoopOutcome> {
    let stage = settings.stage;
    let total_steps = settings.steps_per_epoch * settings.epochs;
    let bar = progress_bar(total_steps as u64, stage);
    let start = Instant::now();
    let mut train_time_s = 0f64;
    let mut sentences_seen = 0usize;
    let mut best: Option<(usize, Metrics)> = None;
    let mut step = 0usize;
    for epoch in 1..=settings.epochs {
        let epoch_start = Instant::now();
        let batches = epoch_batches();
        let mut epoch_loss = 0f64;
        for (index, batch) in batches.iter().enumerate() {
            let t0 = Instant::now();
            step += 1;
            let loss = trainee.train_step(batch, step)?;
            if !loss.is_finite() {
                bail!("the {stage} stage's training loss became {loss} at step {step}; {}", settings.advice);
            }
            train_time_s += t0.elapsed().as_secs_f64();
            sentences_seen += batch.len();
            epoch_loss += loss;
            bar.inc(1);
            let end_of_epoch = index + 1 == batches.len();
            if !(end_of_epoch || (settings.eval_every > 0 && step.is_multiple_of(settings.eval_every))) {
                continue;
            }
            let train_loss = epoch_loss / (index + 1) as f64;
            let eval = bar.suspend(|| trainee.evaluate())?;
            if !eval.loss.is_finite() {
                // A finite training loss but non-finite dev outputs: the weights went bad.
                bail!("the {stage} stage's dev loss became {} at step {step}: the weights are no longer finite; {}", eval.loss, settings.advice);
            }
            log.push_evaluation(stage, step, epoch, train_loss, eval.loss, eval.metrics, start.elapsed().as_secs_f64())?;
            let improved = best.as_ref().is_none_or(|(_, m)| eval.metrics.accuracy > m.accuracy);
            let line = format!(
                "{stage} epoch {epoch} step {step}/{total_steps}: train loss {train_loss:.4}, dev loss {:.4}, dev acc {:.4}, F1 {:.4}{}{}",
                eval.loss,
                eval.metrics.accuracy,
                eval.metrics.f1,
                if improved { " (best)" } else { "" },
                if end_of_epoch { format!("; epoch took {:.0} s", epoch_start.elapsed().as_secs_f64()) } else { String::new() }
            );
            bar.suspend(|| eprintln!("{line}"));
            if improved {
                trainee.save_best()?;
                best = Some((epoch, eval.metrics));
            }
        }
    }
    bar.finish_and_clear();
    let (best_epoch, dev) = best.ok_or_else(|| anyhow::anyhow!("{stage}: no training data, so nothing was evaluated"))?;
    Ok(LoopOutcome { best_epoch, dev, train_time_s, sentences_seen })
}
