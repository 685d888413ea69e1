//! The command line: `distill validate`, `distill run`, `distill bench`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::{Experiment, QUICKSTART_TOML};

#[derive(Parser, Debug)]
#[command(name = "distill", version, about = "Distil a BERT teacher into a small Bi-LSTM student")]
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
    },
    /// Run an experiment's stages; with no file, the embedded quickstart.
    Run {
        file: Option<PathBuf>,
        /// Override a value: `--set student.lr=0.5` (typed as in TOML).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Measure student training and inference speed, beside PyTorch if available.
    Bench(crate::bench::BenchArgs),
}

impl Cli {
    pub fn run(self) -> Result<()> {
        match self.command {
            Command::Validate { files } => {
                let mut failed = 0;
                for file in &files {
                    match Experiment::load(file, &[]) {
                        Ok(exp) => {
                            println!("{}: ok ({}, stages {:?})", file.display(), exp.name, exp.stages);
                            if exp.teacher.is_some() {
                                let dir = crate::train::teacher::teacher_dir(&exp);
                                let state = if crate::train::teacher::finished_teacher(&dir).ok().flatten().is_some() {
                                    "fine-tuned, will be reused"
                                } else {
                                    "not trained yet"
                                };
                                println!("  teacher: {} ({state})", dir.display());
                            }
                        }
                        Err(e) => {
                            println!("{e}");
                            failed += 1;
                        }
                    }
                }
                if failed > 0 {
                    anyhow::bail!("{failed} of {} experiment files are invalid", files.len());
                }
                Ok(())
            }
            Command::Run { file, overrides } => {
                let exp = match &file {
                    Some(path) => Experiment::load(path, &overrides)?,
                    None => Experiment::parse(QUICKSTART_TOML, "experiments/quickstart.toml (embedded)", &overrides)?,
                };
                crate::train::run_experiment(exp)?;
                Ok(())
            }
            Command::Bench(args) => crate::bench::run(args),
        }
    }
}
