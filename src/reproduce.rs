//! `distill reproduce`: the paper table from the committed files. Lists every cell with its
//! state (finished, or missing with the stages it needs and a time estimate from the last
//! measured throughput), runs what is missing — a stage shared between cells (a column's
//! teacher) runs once, as the later cells find it by its key — and writes the table.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::config::{expand_path, Experiment, Stage};
use crate::data::Task;
use crate::report::{read_results, ResultRow};
use crate::table::{ColumnSpec, RowKind, TableSpec};
use crate::train::stage_key::{find_finished, finished_runs, stage_key};

#[derive(clap::Args, Debug)]
pub struct ReproduceArgs {
    /// The table file.
    #[arg(default_value = "experiments/paper.toml")]
    pub spec: PathBuf,
    /// List the cells, their state and what would run; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only the column with this title (e.g. `--only MRPC`).
    #[arg(long)]
    pub only: Option<String>,
    /// Where table.md and table.csv go.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
}

pub fn run(args: ReproduceArgs) -> Result<()> {
    let spec = TableSpec::load(&args.spec)?;
    let columns: Vec<&ColumnSpec> =
        spec.column.iter().filter(|c| args.only.as_ref().is_none_or(|only| c.title.eq_ignore_ascii_case(only))).collect();
    if let (Some(only), true) = (&args.only, columns.is_empty()) {
        let titles: Vec<&str> = spec.column.iter().map(|c| c.title.as_str()).collect();
        bail!("{}: no column titled {only:?}; the columns are {}", args.spec.display(), titles.join(", "));
    }
    let mut missing: Vec<(&ColumnSpec, RowKind, Experiment)> = Vec::new();
    let mut planned: HashSet<String> = HashSet::new();
    for &column in &columns {
        println!("{} ({})", column.title, column.file);
        for kind in RowKind::ALL {
            if let Some(reason) = &column.cell(kind).pending {
                println!("  {:<18} pending: {reason}", kind.title());
                continue;
            }
            for exp in column.experiments(kind)? {
                match find_finished(&exp, kind.stage()) {
                    Some(found) => println!(
                        "  {:<18} finished: dev accuracy {:.4}, F1 {:.4} ({})",
                        kind.title(),
                        found.row.dev_accuracy,
                        found.row.dev_f1,
                        found.dir.display()
                    ),
                    None => {
                        let (stages, command) = column.command(kind, &exp);
                        println!("  {:<18} missing: {command}", kind.title());
                        for stage in stages {
                            // A stage two cells share (a column's teacher) runs once.
                            let line = if planned.insert(stage_key(&exp, stage)) {
                                plan_line(&exp, stage)
                            } else {
                                format!("{}: runs once, listed above", stage.name())
                            };
                            println!("  {:<18}   {line}", "");
                        }
                        missing.push((column, kind, exp));
                    }
                }
            }
        }
    }
    if args.dry_run {
        println!("{} cells missing; --dry-run: nothing run", missing.len());
        return Ok(());
    }
    for (column, kind, exp) in missing {
        let (stages, command) = column.command(kind, &exp);
        eprintln!("reproduce {} / {}: {command}", column.title, kind.title());
        let exp = Experiment { stages, ..exp };
        crate::train::run_experiment(exp)?;
    }
    // The whole table, whatever `--only` ran.
    let cells = crate::table::build(&spec)?;
    print!("{}", crate::table::write(&spec, &cells, &args.out)?);
    eprintln!("written: {} and {}", args.out.join("table.md").display(), args.out.join("table.csv").display());
    Ok(())
}

/// "stage: reuse DIR" or "stage: train, about N min (from the last measured rate)".
fn plan_line(exp: &Experiment, stage: Stage) -> String {
    if let Some(found) = find_finished(exp, stage) {
        return format!("{}: reuse {}", stage.name(), found.dir.display());
    }
    match estimate_seconds(exp, stage) {
        Some((seconds, task)) => format!(
            "{}: train, about {:.0} min (from the last measured throughput of this stage, on {task})",
            stage.name(),
            (seconds / 60.0).ceil()
        ),
        None => format!("{}: train (no measured throughput of this stage yet)", stage.name()),
    }
}

/// Training time of `stage` from the latest `results.csv` row of the same stage (its
/// sentences/s), on the same task where there is one, else on any; the distill stage adds
/// its teacher pass at the last measured rows/s. The transfer set is taken as
/// (1 + n_iter) × the training set, an upper bound. Returns the seconds and the task measured.
fn estimate_seconds(exp: &Experiment, stage: Stage) -> Option<(f64, String)> {
    let out_dir = expand_path(&exp.out_dir);
    let rows: Vec<ResultRow> = read_results(&out_dir.join("results.csv")).ok()?;
    let task = exp.task.name();
    let measured = |same_task: bool| {
        rows.iter()
            .filter(|r| r.stage == stage.name() && r.train_sentences_per_s > 0.0 && (!same_task || r.task == task))
            .max_by_key(|r| r.finished_at_unix)
    };
    let latest = measured(true).or_else(|| measured(false))?;
    let train_rows = training_rows(exp)? as f64;
    let (rows_per_epoch, epochs) = match stage {
        Stage::Teacher => (train_rows, exp.teacher.as_ref()?.epochs),
        Stage::Student => (train_rows, exp.student.as_ref()?.epochs),
        Stage::Distill => (train_rows * (1 + exp.augment.n_iter) as f64, exp.distill.as_ref()?.epochs),
    };
    let mut seconds = rows_per_epoch * epochs as f64 / latest.train_sentences_per_s;
    if stage == Stage::Distill {
        if let Some(rate) = last_teacher_pass_rate(&out_dir, &latest.task) {
            seconds += rows_per_epoch / rate;
        }
    }
    Some((seconds, latest.task.clone()))
}

fn training_rows(exp: &Experiment) -> Option<usize> {
    let task = Task::new(exp.task, exp.data.columns.as_ref());
    let (train, _) = crate::train::load_splits(exp, &task).ok()?;
    Some(train.examples.len())
}

/// `teacher_pass_rows_per_s` of the newest finished distill stage of `task`.
fn last_teacher_pass_rate(out_dir: &Path, task: &str) -> Option<f64> {
    finished_runs(out_dir, Stage::Distill).into_iter().filter(|(_, f)| f.row.task == task).find_map(|(_, f)| {
        let mut reader = csv::Reader::from_path(f.dir.join("summary.csv")).ok()?;
        let column = reader.headers().ok()?.iter().position(|h| h == "teacher_pass_rows_per_s")?;
        reader.records().next()?.ok()?.get(column)?.parse().ok()
    })
}
