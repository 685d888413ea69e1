//! Resume inside a stage. At each evaluation (and every 10 minutes of training between them)
//! the training loop keeps a checkpoint beside the stage's folder (`STAGE_DIR.resume/`, written
//! whole or not at all): the trainee's weights, optimizer moments and dropout stream
//! (`state.safetensors`), the loop's counters (`loop.json`) and the stage's metrics rows so far
//! (`metrics.csv`), and the data it trains on (`data.sha256`: a rerun on edited train or dev
//! files does not continue from it). A rerun continues from it — the batch order is replayed
//! from the seed, so nothing else needs saving — and ends with the metrics an uninterrupted run
//! has, bit for bit on the same machine. The checkpoint is removed once the stage's result is
//! written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::DataDigest;
use crate::metrics::Metrics;
use crate::models::layers::{f32_bytes, f32_values, serialize_tensors, NamedTensor, ParamMut};
use crate::ops::dropout::{DropoutRng, RngPosition};
use crate::optim::Optimizer;
use crate::report::{csv_bytes, MetricsRow};

/// Where the checkpoint of the stage writing to `stage_dir` lives.
pub fn checkpoint_dir(stage_dir: &Path) -> PathBuf {
    let name = stage_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    stage_dir.with_file_name(format!("{name}.resume"))
}

/// Removes a finished stage's checkpoint.
pub fn remove_checkpoint(stage_dir: &Path) -> Result<()> {
    let dir = checkpoint_dir(stage_dir);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("{}: cannot remove the finished stage's checkpoint", dir.display()))?;
    }
    Ok(())
}

/// What a CPU trainee saves: its parameters, their optimizer and the dropout stream.
pub struct TrainingState<'a, 'p> {
    pub params: &'a mut [(String, ParamMut<'p>)],
    pub optimizer: &'a mut Optimizer,
    pub dropout_rng: &'a DropoutRng,
}

const STEPS_KEY: &str = "distill.optimizer_steps";
const RNG_KEY: &str = "distill.dropout_rng";

impl TrainingState<'_, '_> {
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<NamedTensor> = Vec::new();
        for (name, p) in self.params.iter() {
            tensors.push((name.clone(), safetensors::Dtype::F32, p.dims(), f32_bytes(&p.values())));
        }
        let (steps, moments) = self.optimizer.moments();
        for ((name, p), (s1, s2, row_step)) in self.params.iter().zip(moments) {
            tensors.push((format!("optimizer.{name}.s1"), safetensors::Dtype::F32, p.dims(), f32_bytes(s1)));
            tensors.push((format!("optimizer.{name}.s2"), safetensors::Dtype::F32, p.dims(), f32_bytes(s2)));
            if !row_step.is_empty() {
                let bytes = row_step.iter().flat_map(|v| v.to_le_bytes()).collect();
                tensors.push((format!("optimizer.{name}.row_step"), safetensors::Dtype::U64, vec![row_step.len()], bytes));
            }
        }
        let metadata = HashMap::from([
            (STEPS_KEY.to_string(), steps.to_string()),
            (RNG_KEY.to_string(), serde_json::to_string(&self.dropout_rng.position())?),
        ]);
        crate::files::write_atomic(path, &serialize_tensors(&tensors, Some(metadata))?)
    }

    pub fn load(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).with_context(|| format!("{}: not a safetensors file", path.display()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let steps: u64 = meta.get(STEPS_KEY).and_then(|s| s.parse().ok()).with_context(|| format!("{}: no {STEPS_KEY}", path.display()))?;
        let rng: RngPosition = serde_json::from_str(meta.get(RNG_KEY).with_context(|| format!("{}: no {RNG_KEY}", path.display()))?)?;
        let tensors = safetensors::SafeTensors::deserialize(&bytes)?;
        let read = |name: &str, dtype: safetensors::Dtype, len: usize| -> Result<Option<Vec<u8>>> {
            let Ok(view) = tensors.tensor(name) else { return Ok(None) };
            if view.dtype() != dtype || view.data().len() != len * dtype.bitsize() / 8 {
                bail!("{}: tensor {name} is not {len} {dtype:?} values", path.display());
            }
            Ok(Some(view.data().to_vec()))
        };
        let mut moments = Vec::new();
        for (name, p) in self.params.iter_mut() {
            let len = p.dims().iter().product();
            let values = read(name, safetensors::Dtype::F32, len)?.with_context(|| format!("{}: no tensor {name}", path.display()))?;
            p.set_values(&f32_values(&values));
            if steps > 0 {
                let moment = |which: &str| -> Result<Vec<f32>> {
                    let key = format!("optimizer.{name}.{which}");
                    Ok(f32_values(&read(&key, safetensors::Dtype::F32, len)?.with_context(|| format!("{}: no tensor {key}", path.display()))?))
                };
                let row_step = match tensors.tensor(&format!("optimizer.{name}.row_step")) {
                    Ok(view) => view.data().chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
                    Err(_) => Vec::new(),
                };
                moments.push((moment("s1")?, moment("s2")?, row_step));
            }
        }
        self.optimizer.restore_moments(steps, self.params, moments);
        self.dropout_rng.restore(&rng)
    }
}

/// The training loop's counters at a checkpoint. Floats are kept as their bits: JSON text
/// need not read back to the same float, and a resumed run must add up to the same sums.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoopState {
    /// Batches trained on so far (the loop replays the batch order to find its place).
    pub step: usize,
    /// Batches per epoch and epochs when it was written: a mismatch means other settings.
    pub steps_per_epoch: usize,
    pub epochs: usize,
    #[serde(with = "bits")]
    pub epoch_loss: f64,
    #[serde(with = "bits")]
    pub train_time_s: f64,
    #[serde(with = "bits")]
    pub elapsed_s: f64,
    pub sentences_seen: usize,
    /// The kept evaluation: epoch and dev accuracy, precision, recall, F1.
    pub best: Option<(usize, [BitsF64; 4])>,
}

/// An `f64` stored as its bits.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct BitsF64(#[serde(with = "bits")] pub f64);

impl LoopState {
    pub fn best_metrics(&self) -> Option<(usize, Metrics)> {
        self.best.map(|(epoch, [a, p, r, f])| (epoch, Metrics { accuracy: a.0, precision: p.0, recall: r.0, f1: f.0 }))
    }

    pub fn set_best(&mut self, epoch: usize, m: Metrics) {
        self.best = Some((epoch, [BitsF64(m.accuracy), BitsF64(m.precision), BitsF64(m.recall), BitsF64(m.f1)]));
    }
}

mod bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}

/// A stage's checkpoint folder, and the data its stage reads (recorded in it, so that a
/// rerun on edited data does not continue from it).
pub struct Checkpoint<'a> {
    pub dir: PathBuf,
    pub data: &'a DataDigest,
}

/// What [`Checkpoint::load`] found.
pub struct Resumed {
    pub state: LoopState,
    pub rows: Vec<MetricsRow>,
}

impl Checkpoint<'_> {
    /// Writes the checkpoint whole: `save_trainee` writes the state file into the folder
    /// being built and returns false where the device cannot (nothing is then kept).
    pub fn save(&self, state: &LoopState, rows: &[MetricsRow], save_trainee: impl FnOnce(&Path) -> Result<bool>) -> Result<bool> {
        let mut saved = true;
        crate::files::write_dir_atomic(&self.dir, |tmp| {
            saved = save_trainee(&tmp.join("state.safetensors"))?;
            std::fs::write(tmp.join("loop.json"), serde_json::to_string_pretty(state)?)?;
            std::fs::write(tmp.join("metrics.csv"), csv_bytes(rows)?)?;
            self.data.write(tmp)
        })?;
        if !saved {
            std::fs::remove_dir_all(&self.dir).ok();
        }
        Ok(saved)
    }

    /// The loop's counters and metrics rows of a checkpoint with these settings, if there is
    /// one; the trainee's state is loaded by `load_trainee`.
    pub fn load(&self, steps_per_epoch: usize, epochs: usize, load_trainee: impl FnOnce(&Path) -> Result<()>) -> Result<Option<Resumed>> {
        let loop_file = self.dir.join("loop.json");
        if !loop_file.is_file() {
            return Ok(None);
        }
        let state: LoopState = serde_json::from_slice(&std::fs::read(&loop_file)?).with_context(|| format!("{}: unreadable", loop_file.display()))?;
        if state.steps_per_epoch != steps_per_epoch || state.epochs != epochs {
            bail!(
                "{}: written for {} epochs of {} batches, not {epochs} of {steps_per_epoch}",
                self.dir.display(),
                state.epochs,
                state.steps_per_epoch
            );
        }
        let mut rows = Vec::new();
        let metrics = self.dir.join("metrics.csv");
        for row in csv::Reader::from_path(&metrics).with_context(|| format!("{}: cannot read", metrics.display()))?.deserialize() {
            rows.push(row.with_context(|| format!("{}: unreadable", metrics.display()))?);
        }
        load_trainee(&self.dir.join("state.safetensors"))?;
        Ok(Some(Resumed { state, rows }))
    }
}
