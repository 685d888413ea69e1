//! CSV reports: each run's metrics log and the shared `results.csv`. Every file is
//! written through `crate::files`, so a crash never leaves half a file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::files::write_atomic;
use crate::metrics::Metrics;

pub fn csv_bytes<R: Serialize>(rows: &[R]) -> Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer.serialize(row)?;
    }
    writer.into_inner().map_err(|e| anyhow::anyhow!("{e}"))
}

/// One line of `metrics.csv`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct MetricsRow {
    pub stage: String,
    pub step: usize,
    pub epoch: usize,
    pub split: String,
    pub loss: f64,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub elapsed_s: f64,
}

/// `metrics.csv` of a run, rewritten atomically after each new row.
pub struct MetricsLog {
    path: PathBuf,
    rows: Vec<MetricsRow>,
}

impl MetricsLog {
    pub fn new(path: PathBuf) -> MetricsLog {
        MetricsLog { path, rows: Vec::new() }
    }

    /// Continues an existing `metrics.csv`, keeping the rows of other stages and dropping
    /// those of `stage` (which is about to be rerun).
    pub fn open(path: PathBuf, stage: &str) -> Result<MetricsLog> {
        let mut rows = Vec::new();
        if path.is_file() {
            let mut reader = csv::Reader::from_path(&path).with_context(|| format!("{}: cannot read", path.display()))?;
            for row in reader.deserialize::<MetricsRow>() {
                let row = row.with_context(|| format!("{}: not a metrics.csv written by distill", path.display()))?;
                if row.stage != stage {
                    rows.push(row);
                }
            }
        }
        Ok(MetricsLog { path, rows })
    }

    /// Puts back the rows a resumed stage had logged before its checkpoint.
    pub fn restore(&mut self, rows: Vec<MetricsRow>) -> Result<()> {
        self.rows.extend(rows);
        write_atomic(&self.path, &csv_bytes(&self.rows)?)
    }

    pub fn push(&mut self, row: MetricsRow) -> Result<()> {
        self.rows.push(row);
        write_atomic(&self.path, &csv_bytes(&self.rows)?)
    }

    /// Logs one evaluation as two rows: the mean training loss since the epoch began, and
    /// the dev loss and metrics.
    #[allow(clippy::too_many_arguments)]
    pub fn push_evaluation(
        &mut self,
        stage: &str,
        step: usize,
        epoch: usize,
        train_loss: f64,
        dev_loss: f64,
        dev: Metrics,
        elapsed_s: f64,
    ) -> Result<()> {
        let row = |split: &str, loss: f64, m: Metrics| MetricsRow {
            stage: stage.into(),
            step,
            epoch,
            split: split.into(),
            loss,
            accuracy: m.accuracy,
            precision: m.precision,
            recall: m.recall,
            f1: m.f1,
            elapsed_s,
        };
        self.rows.push(row("train", train_loss, Metrics::default()));
        self.push(row("dev", dev_loss, dev))
    }

    pub fn rows(&self) -> &[MetricsRow] {
        &self.rows
    }
}

/// One line of `results.csv`: a finished stage of an experiment.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ResultRow {
    pub experiment: String,
    pub task: String,
    pub stage: String,
    pub params: usize,
    pub dev_accuracy: f64,
    pub dev_precision: f64,
    pub dev_recall: f64,
    pub dev_f1: f64,
    pub best_epoch: usize,
    pub train_time_s: f64,
    pub train_sentences_per_s: f64,
    pub eval_sentences_per_s: f64,
    pub config_hash: String,
    pub git_commit: String,
    pub run_dir: String,
    pub finished_at_unix: u64,
}

impl ResultRow {
    pub fn dev(&self) -> Metrics {
        Metrics {
            accuracy: self.dev_accuracy,
            precision: self.dev_precision,
            recall: self.dev_recall,
            f1: self.dev_f1,
        }
    }
}

/// Appends a row to `results.csv` (header written when the file is new), atomically and
/// once: a row already there (same run dir, stage and finish time) is not added again, so a
/// rerun after a kill between a stage's marker and its row adds the missing row and nothing
/// more. Runs in other processes (sweep shards) append to the same file: a lock file next to
/// it keeps one read-modify-rename from losing another's row. A torn last line (a writer
/// killed mid-write by something other than distill) is dropped with a warning; a file with
/// another header is an error, not appended to.
pub fn append_result(path: &Path, row: &ResultRow) -> Result<()> {
    let _lock = crate::files::lock(&path.with_extension("csv.lock"), "the results file")?;
    let mut bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    let mut header = csv::Writer::from_writer(Vec::new());
    header.serialize(row)?;
    let fresh = header.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    let header_line = &fresh[..=fresh.iter().position(|&b| b == b'\n').expect("a header line")];
    if !bytes.is_empty() {
        if !bytes.starts_with(header_line) {
            anyhow::bail!(
                "{}: its header is not the one this version writes (another tool's file, or an older layout); move it aside and rerun",
                path.display()
            );
        }
        if !bytes.ends_with(b"\n") {
            let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            eprintln!("{}: dropped a torn last line ({} bytes) left by an interrupted writer", path.display(), bytes.len() - keep);
            bytes.truncate(keep);
        }
        let rows = read_results_bytes(&bytes, path)?;
        if rows.iter().any(|r| r.run_dir == row.run_dir && r.stage == row.stage && r.finished_at_unix == row.finished_at_unix) {
            return Ok(());
        }
        bytes.extend(&fresh[header_line.len()..]);
    } else {
        bytes = fresh;
    }
    write_atomic(path, &bytes)
}

/// All rows of a `results.csv` (or a sweep's shard file); errors name the file and line.
pub fn read_results(path: &Path) -> Result<Vec<ResultRow>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    read_results_bytes(&bytes, path)
}

fn read_results_bytes(bytes: &[u8], path: &Path) -> Result<Vec<ResultRow>> {
    let mut reader = csv::Reader::from_reader(bytes);
    let mut rows = Vec::new();
    for (i, row) in reader.deserialize::<ResultRow>().enumerate() {
        rows.push(row.with_context(|| format!("{}:{}: not a results row written by distill", path.display(), i + 2))?);
    }
    Ok(rows)
}

/// The commit this binary was built from (`-dirty` when its sources had uncommitted changes,
/// `unknown` when built outside a git checkout), stamped by `build.rs`.
pub fn build_commit() -> &'static str {
    env!("DISTILL_BUILD_COMMIT")
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
