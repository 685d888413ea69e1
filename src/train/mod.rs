//! Training stages: the run directory, the stage runner, and the three stages, which all
//! train through one loop (`training_loop`).

pub mod batches;
pub mod distill;
pub mod resume;
pub mod stage_key;
pub mod student;
pub mod teacher;
pub mod training_loop;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::config::{expand_path, Experiment, Stage};
use crate::data::{load_split, DataDigest, Dataset, LoadOptions, Task};
use crate::files::write_atomic;
use crate::metrics::Metrics;
use crate::report::{append_result, build_commit, unix_now, ResultRow};
use stage_key::{find_finished, stage_key, FinishedStage, Lookup};

/// `OUT_DIR/NAME-HASH/`: where a run of `experiment` (this very config) writes.
pub fn run_dir(experiment: &Experiment) -> PathBuf {
    expand_path(&experiment.out_dir).join(format!("{}-{}", experiment.name, experiment.config_hash()))
}

/// The loop counters a run of `experiment` left in `stage`'s resume checkpoint, if it was
/// stopped inside that stage on the data the experiment's files hold now (a rerun continues
/// from there).
pub fn interrupted_at(experiment: &Experiment, stage: Stage) -> Option<resume::LoopState> {
    let stage_dir = match stage {
        Stage::Teacher => teacher::teacher_dir(experiment),
        _ => run_dir(experiment).join(stage.name()),
    };
    let checkpoint = resume::checkpoint_dir(&stage_dir);
    DataDigest::of_experiment(experiment).ok()?.check(&checkpoint).ok()?;
    let bytes = std::fs::read(checkpoint.join("loop.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A run's folder and identity.
pub struct RunContext {
    pub experiment: Experiment,
    pub config_hash: String,
    pub run_dir: PathBuf,
    pub results_csv: PathBuf,
    /// The train and dev files' digest as the run started: each stage, and its resume
    /// checkpoint, records it.
    pub data_digest: DataDigest,
}

impl RunContext {
    /// Creates `OUT_DIR/NAME-HASH/` and saves the resolved config there.
    pub fn create(experiment: Experiment, data_digest: DataDigest) -> Result<RunContext> {
        let config_hash = experiment.config_hash();
        let out_dir = expand_path(&experiment.out_dir);
        let run_dir = run_dir(&experiment);
        std::fs::create_dir_all(&run_dir).with_context(|| format!("{}: cannot create", run_dir.display()))?;
        write_atomic(&run_dir.join("config.toml"), experiment.to_toml().as_bytes())?;
        Ok(RunContext { experiment, config_hash, results_csv: out_dir.join("results.csv"), run_dir, data_digest })
    }
}

impl RunContext {
    /// Takes `stage` from where it already finished: the row (relabelled with this run) is
    /// returned; a student stage's folder is linked here so that `distill predict RUN_DIR`
    /// works. Nothing is appended to `results.csv`.
    fn reuse(&self, stage: Stage, found: FinishedStage) -> Result<ResultRow> {
        let row = ResultRow {
            experiment: self.experiment.name.clone(),
            config_hash: self.config_hash.clone(),
            run_dir: self.run_dir.display().to_string(),
            ..found.row
        };
        eprintln!(
            "{} {stage:?}: reusing {} (dev accuracy {:.4}, F1 {:.4}; the same inputs, key {}); nothing to train",
            row.experiment,
            found.dir.display(),
            row.dev_accuracy,
            row.dev_f1,
            stage_key(&self.experiment, stage)
        );
        let here = self.run_dir.join(stage.name());
        if stage == Stage::Teacher {
            // The teacher stays in its own dir and is found there again next time; no marker
            // here, since a marker's row is one this run added to results.csv.
            return Ok(row);
        }
        // An interrupted attempt of the stage here is replaced by the link.
        if here.is_symlink() || here.is_file() {
            std::fs::remove_file(&here)?;
        } else if here.is_dir() {
            std::fs::remove_dir_all(&here).with_context(|| format!("{}: cannot remove the unfinished stage", here.display()))?;
        }
        let same_parent = found.dir.parent().and_then(Path::parent) == self.run_dir.parent();
        let target = match (same_parent, found.dir.parent().and_then(Path::file_name)) {
            (true, Some(run)) => Path::new("..").join(run).join(stage.name()),
            _ => std::fs::canonicalize(&found.dir)?,
        };
        std::os::unix::fs::symlink(&target, &here)
            .with_context(|| format!("{}: cannot link to {}", here.display(), target.display()))?;
        Ok(row)
    }

    /// The `results.csv` row of a finished stage of this run.
    #[allow(clippy::too_many_arguments)]
    pub fn result_row(
        &self,
        stage: &str,
        params: usize,
        best_epoch: usize,
        dev: Metrics,
        train_time_s: f64,
        sentences_seen: usize,
        eval_sentences_per_s: f64,
    ) -> ResultRow {
        ResultRow {
            experiment: self.experiment.name.clone(),
            task: self.experiment.task.name().into(),
            stage: stage.into(),
            params,
            dev_accuracy: dev.accuracy,
            dev_precision: dev.precision,
            dev_recall: dev.recall,
            dev_f1: dev.f1,
            best_epoch,
            train_time_s,
            train_sentences_per_s: sentences_seen as f64 / train_time_s.max(1e-9),
            eval_sentences_per_s,
            config_hash: self.config_hash.clone(),
            git_commit: build_commit().into(),
            run_dir: self.run_dir.display().to_string(),
            finished_at_unix: unix_now(),
        }
    }
}

/// Runs every stage an experiment lists; returns one result row per stage.
///
/// A stage that already finished in this run dir (same resolved config, so same run id) is
/// not run again: its row is read back from `RUN_DIR/STAGE/result.json`. So a rerun after
/// an interruption picks up at the first unfinished stage. A stage whose inputs (its key,
/// see [`stage_key`]) match a stage finished in another run under `out_dir` is reused from
/// there: linked into this run dir, no training, no new `results.csv` row. A stage that read
/// other data stops the run (see [`Retrain`]).
pub fn run_experiment(experiment: Experiment) -> Result<Vec<ResultRow>> {
    run_experiment_with(experiment, Retrain::Unfinished)
}

/// Which stages a run trains again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retrain {
    /// Only unfinished ones; a stage here (finished, or stopped part-way) that read other
    /// train or dev files than the experiment's are now stops the run, naming the file and
    /// `--force` (`distill run`: an edited data file is worth a look before hours of training).
    Unfinished,
    /// Also those that read other data, on the current data (`distill reproduce` and `distill
    /// sweep`, whose job is every cell or point from the files as they are).
    OtherData,
    /// Every stage (`--force`).
    All,
}

pub fn run_experiment_with(experiment: Experiment, retrain: Retrain) -> Result<Vec<ResultRow>> {
    // Before the run dir exists, so a machine without the device, or a missing file, leaves
    // nothing behind and costs no training.
    crate::backend::device_present(experiment.device)?;
    experiment.check_inputs().map_err(|(key, message)| anyhow::anyhow!("key `{key}`: {message}"))?;
    let data_digest = DataDigest::of_experiment(&experiment)
        .with_context(|| format!("{}: cannot read the data files", expand_path(&experiment.data.dir).display()))?;
    // Every stage reads both splits: a bad row (named by file and line) stops the run here.
    load_splits(&experiment, &experiment.task())?;
    let ctx = RunContext::create(experiment, data_digest)?;
    // One process at a time per run dir: a second `distill run` of the same experiment waits,
    // then finds the stages finished instead of training them again.
    let _run_lock = crate::files::lock(&ctx.run_dir.join(".lock"), "another run of this experiment")?;
    let out_dir = ctx.results_csv.parent().unwrap_or(Path::new(".")).to_path_buf();
    for dir in [ctx.run_dir.clone(), out_dir.clone(), out_dir.join("teachers"), out_dir.join("cache")] {
        crate::files::remove_stale_temporaries(&dir);
    }
    eprintln!("run {} → {}", ctx.experiment.name, ctx.run_dir.display());
    let mut rows = Vec::new();
    for stage in ctx.experiment.stages.clone() {
        let marker = stage_result_path(&ctx.run_dir, stage);
        // Experiments sharing a teacher dir train it one at a time (the second then reuses it).
        let _teacher_lock = match stage {
            Stage::Teacher => Some(crate::files::lock(&teacher::teacher_dir(&ctx.experiment).with_extension("lock"), "the shared teacher")?),
            _ => None,
        };
        // Where the stage writes (its resume checkpoint lies beside it).
        let stage_dir = match stage {
            Stage::Teacher => teacher::teacher_dir(&ctx.experiment),
            _ => ctx.run_dir.join(stage.name()),
        };
        if retrain == Retrain::All {
            resume::remove_checkpoint(&stage_dir)?;
        } else {
            // What this stage, finished or stopped part-way, read: a resume checkpoint records
            // its data as a finished stage does.
            let checkpoint = resume::checkpoint_dir(&stage_dir);
            let read_other_data = [stage_dir.clone(), checkpoint.clone()]
                .into_iter()
                .find_map(|dir| ctx.data_digest.check(&dir).err().map(|change| (dir, change)));
            // A stage that read other data, being trained again on this data (`--force`, or
            // reproduce) and stopped part-way: its checkpoint, not its old result, says where it is.
            let retraining = read_other_data.as_ref().is_some_and(|(dir, _)| *dir == stage_dir)
                && checkpoint.join(DataDigest::FILE_NAME).is_file()
                && ctx.data_digest.check(&checkpoint).is_ok();
            let stale_here = read_other_data.is_some();
            if retraining {
                eprintln!("{}: trained again on this data, continuing from {}", stage_dir.display(), checkpoint.display());
            } else if let Some((dir, change)) = read_other_data {
                if retrain == Retrain::Unfinished {
                    bail!("{}: that {} stage read other data: {change}; --force trains it again on the new data", dir.display(), stage.name());
                }
                eprintln!("{}: not taken as done, it read other data: {change}", dir.display());
                resume::remove_checkpoint(&stage_dir)?;
            } else if let Some(row) = finished_stage(&marker)? {
                resume::remove_checkpoint(&stage_dir)?;
                // The marker is written before the row: a kill between them left the row out.
                append_result(&ctx.results_csv, &row)?;
                eprintln!(
                    "{} {stage:?}: already finished (dev accuracy {:.4}, F1 {:.4}; {}); --force reruns it",
                    row.experiment,
                    row.dev_accuracy,
                    row.dev_f1,
                    marker.display()
                );
                rows.push(row);
                continue;
            }
            match find_finished(&ctx.experiment, stage) {
                Lookup::Finished(found) => {
                    resume::remove_checkpoint(&stage_dir)?;
                    rows.push(ctx.reuse(stage, found)?);
                    continue;
                }
                // (Said above when it is this run's own stage, or the teacher's dir.)
                Lookup::ReadOtherData { dir, change } if !stale_here => eprintln!("{}: not reused, it read other data: {change}", dir.display()),
                Lookup::ReadOtherData { .. } | Lookup::Missing => {}
            }
        }
        // A stage reused earlier is a link to the run that trained it: training it here
        // (`--force`, or that run read other data) replaces the link, never writes through it.
        if stage != Stage::Teacher && stage_dir.is_symlink() {
            std::fs::remove_file(&stage_dir).with_context(|| format!("{}: cannot remove the link", stage_dir.display()))?;
        }
        let row = match stage {
            Stage::Teacher => teacher::train_teacher(&ctx)?,
            Stage::Student => student::train_student(&ctx)?,
            Stage::Distill => distill::train_distilled(&ctx)?,
        };
        // The data it read, then the marker, then the row (appended once): a kill between the
        // last two is repaired by the rerun above, and never gives a second row.
        ctx.data_digest.write(&stage_dir)?;
        write_atomic(&marker, serde_json::to_string_pretty(&row)?.as_bytes())?;
        append_result(&ctx.results_csv, &row)?;
        resume::remove_checkpoint(&stage_dir)?;
        crate::plots::learning_curves(&ctx.run_dir)?;
        eprintln!(
            "{} {:?}: dev accuracy {:.4}, F1 {:.4}; {:.0} s; results in {}",
            row.experiment,
            stage,
            row.dev_accuracy,
            row.dev_f1,
            row.train_time_s,
            ctx.results_csv.display()
        );
        rows.push(row);
    }
    Ok(rows)
}

/// `RUN_DIR/STAGE/result.json`: written when the stage finished (before its results row).
pub fn stage_result_path(run_dir: &Path, stage: Stage) -> PathBuf {
    run_dir.join(stage.name()).join("result.json")
}

fn finished_stage(marker: &Path) -> Result<Option<ResultRow>> {
    match std::fs::read(marker) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("{}: unreadable; delete it (or pass --force) to rerun the stage", marker.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("{}: cannot read", marker.display())),
    }
}

/// The train and dev splits of an experiment, loaded with its options.
pub fn load_splits(exp: &Experiment, task: &Task) -> Result<(Dataset, Dataset)> {
    let dir = expand_path(&exp.data.dir);
    let load = |file: &str, limit: usize| -> Result<Dataset> {
        let opts = LoadOptions { skip_bad_rows: exp.data.skip_bad_rows, limit };
        let ds = load_split(task, &dir.join(file), opts)?;
        if ds.skipped > 0 {
            eprintln!("{}: skipped {} malformed rows", ds.path.display(), ds.skipped);
        }
        Ok(ds)
    };
    Ok((load(&exp.data.train, exp.data.train_limit)?, load(&exp.data.dev, exp.data.dev_limit)?))
}

