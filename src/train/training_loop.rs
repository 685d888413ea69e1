//! The one training loop, shared by the teacher and student stages: epochs of batches,
//! evaluation on dev at the end of each epoch (and every `eval_every` steps), the best
//! evaluation's weights kept as the stage's checkpoint, a metrics row per evaluation and a
//! progress line. A stage supplies only its [`Trainee`] (how to take a step, evaluate and
//! save) and its batch order. At each evaluation (and every 10 minutes between them) the
//! loop also keeps a resume checkpoint (see [`super::resume`]); a rerun continues from it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};

use super::resume::{Checkpoint, LoopState};
use crate::config::TrainingSettings;
use crate::data::DataDigest;
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
    /// Writes what a resumed run needs besides the loop's counters (weights, optimizer state,
    /// dropout stream) to `path`; false where the device cannot, and nothing was written.
    fn save_state(&mut self, path: &Path) -> Result<bool>;
    /// Continues from a file [`Trainee::save_state`] wrote.
    fn load_state(&mut self, path: &Path) -> Result<()>;
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
    /// Where the resume checkpoint is kept, and the data it records (see [`DataDigest`]).
    pub checkpoint_dir: PathBuf,
    pub data: &'a DataDigest,
}

impl<'a> LoopSettings<'a> {
    /// The loop of `stage` trained with its section's `training` settings over `rows` rows,
    /// keeping its resume checkpoint in `checkpoint_dir` with a record of `data`.
    pub fn new(stage: &'a str, training: &TrainingSettings, rows: usize, checkpoint_dir: PathBuf, data: &'a DataDigest) -> LoopSettings<'a> {
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
            checkpoint_dir,
            data,
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

/// The longest training time between two resume checkpoints: 10 minutes, or
/// `DISTILL_CHECKPOINT_EVERY_S` seconds.
fn checkpoint_interval() -> std::time::Duration {
    let seconds = std::env::var("DISTILL_CHECKPOINT_EVERY_S").ok().and_then(|v| v.parse::<f64>().ok()).filter(|s| *s >= 0.0);
    std::time::Duration::from_secs_f64(seconds.unwrap_or(600.0))
}

/// Test hook: stop with an error after this many evaluations (their checkpoints written), as
/// a kill would, so that tests can resume.
const STOP_AFTER_EVALUATIONS: &str = "DISTILL_STOP_AFTER_EVALUATIONS";

/// Trains `trainee` for `settings.epochs` epochs; `epoch_batches` gives each epoch's batches
/// of training-row indices (the same sequence on every run, so that a resumed run can replay
/// it to find its place). Keeps the checkpoint of the best dev accuracy (the first of ties).
pub fn run_training_loop(
    settings: &LoopSettings,
    trainee: &mut impl Trainee,
    mut epoch_batches: impl FnMut() -> Vec<Vec<usize>>,
    log: &mut MetricsLog,
) -> Result<LoopOutcome> {
    let stage = settings.stage;
    let total_steps = settings.steps_per_epoch * settings.epochs;
    let checkpoint = Checkpoint { dir: settings.checkpoint_dir.clone(), data: settings.data };
    let mut state = LoopState { steps_per_epoch: settings.steps_per_epoch, epochs: settings.epochs, ..LoopState::default() };
    let mut stage_rows = Vec::new();
    match checkpoint.load(settings.steps_per_epoch, settings.epochs, |path| trainee.load_state(path)) {
        Ok(Some(resumed)) => {
            eprintln!("{stage}: resuming after step {} of {total_steps} from {}", resumed.state.step, checkpoint.dir.display());
            state = resumed.state;
            log.restore(resumed.rows.clone())?;
            stage_rows = resumed.rows;
        }
        Ok(None) => {}
        Err(e) => eprintln!("{stage}: the checkpoint in {} cannot be used ({e:#}); the stage starts over", checkpoint.dir.display()),
    }
    let stop_after: Option<usize> = std::env::var(STOP_AFTER_EVALUATIONS).ok().and_then(|v| v.parse().ok());
    let mut evaluations = 0usize;
    let bar = progress_bar(total_steps as u64, stage);
    bar.skip(state.step as u64);
    let start = Instant::now();
    let elapsed_before = state.elapsed_s;
    let mut last_checkpoint = Instant::now();
    let checkpoint_interval = checkpoint_interval();
    let mut step = 0usize;
    for epoch in 1..=settings.epochs {
        let epoch_start = Instant::now();
        // Drawn even for epochs a resumed run skips: the shuffles advance the same stream.
        let batches = epoch_batches();
        if step + batches.len() <= state.step {
            step += batches.len();
            continue;
        }
        let done_here = state.step - step;
        if done_here == 0 {
            state.epoch_loss = 0.0;
        }
        step += done_here;
        for (index, batch) in batches.iter().enumerate().skip(done_here) {
            let t0 = Instant::now();
            step += 1;
            let loss = trainee.train_step(batch, step)?;
            if !loss.is_finite() {
                bail!("the {stage} stage's training loss became {loss} at step {step}; {}", settings.advice);
            }
            state.step = step;
            state.train_time_s += t0.elapsed().as_secs_f64();
            state.sentences_seen += batch.len();
            state.epoch_loss += loss;
            bar.inc(1);
            let end_of_epoch = index + 1 == batches.len();
            if !(end_of_epoch || (settings.eval_every > 0 && step.is_multiple_of(settings.eval_every))) {
                // Long epochs (an SST-2 teacher epoch is ~17 minutes here) also keep a
                // checkpoint every so often between evaluations.
                if last_checkpoint.elapsed() >= checkpoint_interval {
                    state.elapsed_s = elapsed_before + start.elapsed().as_secs_f64();
                    checkpoint.save(&state, &stage_rows, |path| trainee.save_state(path))?;
                    last_checkpoint = Instant::now();
                }
                continue;
            }
            let train_loss = state.epoch_loss / (index + 1) as f64;
            let eval = bar.suspend(|| trainee.evaluate())?;
            if !eval.loss.is_finite() {
                // A finite training loss but non-finite dev outputs: the weights went bad.
                bail!("the {stage} stage's dev loss became {} at step {step}: the weights are no longer finite; {}", eval.loss, settings.advice);
            }
            state.elapsed_s = elapsed_before + start.elapsed().as_secs_f64();
            let rows_before = log.rows().len();
            log.push_evaluation(stage, step, epoch, train_loss, eval.loss, eval.metrics, state.elapsed_s)?;
            stage_rows.extend_from_slice(&log.rows()[rows_before..]);
            let improved = state.best_metrics().is_none_or(|(_, m)| eval.metrics.accuracy > m.accuracy);
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
                state.set_best(epoch, eval.metrics);
            }
            if !checkpoint.save(&state, &stage_rows, |path| trainee.save_state(path))? && evaluations == 0 {
                bar.suspend(|| eprintln!("note: {stage}: this device keeps no resume checkpoint; an interrupted stage starts over"));
            }
            last_checkpoint = Instant::now();
            evaluations += 1;
            if stop_after == Some(evaluations) {
                bail!("{stage}: stops here ({STOP_AFTER_EVALUATIONS}={evaluations})");
            }
        }
    }
    bar.finish_and_clear();
    let (best_epoch, dev) = state.best_metrics().ok_or_else(|| anyhow::anyhow!("{stage}: no training data, so nothing was evaluated"))?;
    Ok(LoopOutcome { best_epoch, dev, train_time_s: state.train_time_s, sentences_seen: state.sentences_seen })
}
