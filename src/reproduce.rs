//! `distill reproduce`: the paper table from the committed files. Lists every cell with its
//! state (finished, or missing with the stages it needs and a time estimate from the last
//! measured throughput), runs what is missing — a stage shared between cells (a column's
//! teacher) runs once, as the later cells find it by its key — and writes the table.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Result};

use crate::config::{expand_path, Experiment, Stage};
use crate::data::Dataset;
use crate::encode::TeacherSet;
use crate::models::bert::BertConfig;
use crate::report::{read_results, ResultRow};
use crate::table::{ColumnSpec, RowKind, TableSpec};
use crate::tokenize::BertTokenizer;
use crate::train::stage_key::{find_finished, finished_runs, stage_key, Lookup};
use crate::train::Retrain;

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
    /// Where table.md and table.csv go [default: the table file's `out`, else runs].
    #[arg(long)]
    pub out: Option<PathBuf>,
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
            for (_, exp) in column.runs(kind)? {
                match find_finished(&exp, kind.stage()) {
                    Lookup::Finished(found) => println!(
                        "  {:<18} finished: dev accuracy {:.4}, F1 {:.4} ({})",
                        kind.title(),
                        found.row.dev_accuracy,
                        found.row.dev_f1,
                        found.dir.display()
                    ),
                    cell => {
                        let (stages, command) = column.command(kind, &exp);
                        let why = match &cell {
                            Lookup::ReadOtherData { change, .. } => format!(" (its run read other data: {change})"),
                            _ => String::new(),
                        };
                        println!("  {:<18} missing{why}: {command}", kind.title());
                        let as_run = Experiment { stages: stages.clone(), ..exp.clone() };
                        for stage in stages {
                            // The cell's own stage was looked up above.
                            let lookup = if stage == kind.stage() { Lookup::Missing } else { find_finished(&exp, stage) };
                            // A finished stage is reused by each cell; one two cells share (a column's teacher) runs once.
                            let line = match lookup {
                                Lookup::Finished(found) => format!("{}: reuse {}", stage.name(), found.dir.display()),
                                _ if planned.insert(stage_key(&exp, stage)) => estimate_line(&as_run, stage),
                                _ => format!("{}: runs once, listed above", stage.name()),
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
        // A cell whose stages read other data than the files now hold is trained again on them.
        crate::train::run_experiment_with(exp, Retrain::OtherData)?;
    }
    // The whole table, whatever `--only` ran.
    let cells = crate::table::build(&spec)?;
    let out = spec.out_dir(args.out);
    print!("{}", crate::table::write(&spec, &cells, &out)?);
    eprintln!("written: {} and {}", out.join("table.md").display(), out.join("table.csv").display());
    Ok(())
}

/// "stage: train, about N min (from the measured rate)", less what an interrupted run of
/// `exp` (the experiment as `reproduce` runs it) already trained.
fn estimate_line(exp: &Experiment, stage: Stage) -> String {
    let (verb, left) = match crate::train::interrupted_at(exp, stage) {
        Some(at) if at.steps_per_epoch * at.epochs > 0 => {
            let total = at.steps_per_epoch * at.epochs;
            (format!("resume after step {} of {total}", at.step), 1.0 - at.step as f64 / total as f64)
        }
        _ => ("train".to_string(), 1.0),
    };
    match estimate_seconds(exp, stage) {
        Some((seconds, task, scaled)) => format!(
            "{}: {verb}, about {:.0} min (from the median throughput of this stage's last runs, on {task}{})",
            stage.name(),
            (seconds * left / 60.0).ceil(),
            if scaled { ", scaled to this experiment's lengths and model sizes" } else { "" }
        ),
        None => format!("{}: {verb} (no measured throughput of this stage yet)", stage.name()),
    }
}

/// Training time of `stage` from the `results.csv` rows of the same stage (the median of what
/// its last five runs' sentences/s say), on the same task where there is one, else on any; the
/// distill stage adds its teacher pass at the last measured rows/s unless the logits are
/// cached. The transfer set is taken as (1 + n_iter) × the training set, an upper bound. A rate
/// measured on another task or another model size is scaled by [`row_cost`] of the two
/// experiments (SST-2's 13-piece sentences on a 6-layer teacher say little about 68-piece
/// reviews on a 12-layer one; a 300-wide student costs nearly twice a 50-wide one). Returns the
/// seconds, the task measured and whether the rate was scaled.
fn estimate_seconds(exp: &Experiment, stage: Stage) -> Option<(f64, String, bool)> {
    let out_dir = expand_path(&exp.out_dir);
    let rows: Vec<ResultRow> = read_results(&out_dir.join("results.csv")).ok()?;
    let task = exp.task.name();
    let recent = |same_task: bool| {
        let mut recent: Vec<&ResultRow> =
            rows.iter().filter(|r| r.stage == stage.name() && r.train_sentences_per_s > 0.0 && (!same_task || r.task == task)).collect();
        recent.sort_by_key(|r| std::cmp::Reverse(r.finished_at_unix));
        recent.truncate(5);
        recent
    };
    let runs = Some(recent(true)).filter(|r| !r.is_empty()).unwrap_or_else(|| recent(false));
    // How much dearer a row of `exp` is than a row of a measured run.
    let relative = |measured: &ResultRow, model: CostedModel| -> f64 {
        let measured_exp = Experiment::load(&PathBuf::from(&measured.run_dir).join("config.toml"), &[]).ok();
        match (row_cost(exp, model), measured_exp.and_then(|m| row_cost(&m, model))) {
            (Some(ours), Some(theirs)) if theirs > 0.0 => ours / theirs,
            _ => 1.0,
        }
    };
    let train_rows = training_rows(exp)? as f64;
    let (rows_per_epoch, epochs, model) = match stage {
        Stage::Teacher => (train_rows, exp.teacher.as_ref()?.epochs, CostedModel::Teacher),
        Stage::Student => (train_rows, exp.student.as_ref()?.epochs, CostedModel::Student),
        Stage::Distill => (train_rows * (1 + exp.augment.n_iter) as f64, exp.distill.as_ref()?.epochs, CostedModel::Student),
    };
    // The median estimate: one run slowed by a busy machine (or paused) does not set it.
    let mut estimates: Vec<(f64, f64, &ResultRow)> = runs
        .into_iter()
        .map(|run| {
            let scale = relative(run, model);
            (rows_per_epoch * epochs as f64 / run.train_sentences_per_s * scale, scale, run)
        })
        .collect();
    estimates.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut seconds, scale, measured) = *estimates.get(estimates.len() / 2)?;
    if stage == Stage::Distill && !logits_cached(exp) {
        if let Some(rate) = last_teacher_pass_rate(&out_dir, &measured.task) {
            seconds += rows_per_epoch / rate * relative(measured, CostedModel::Teacher);
        }
    }
    Some((seconds, measured.task.clone(), (scale - 1.0).abs() > 1e-9))
}

#[derive(Clone, Copy)]
enum CostedModel {
    Teacher,
    Student,
}

/// Multiply-adds per training row of `exp` for one model, up to a constant factor: the mean
/// length of a training row in the teacher's pieces (cut at the model's `max_seq_len`; the
/// student's own tokens are near enough) × the model's multiply-adds per token. `None`
/// without a `[teacher]` (and, for the student's cost, a `[student]`), or when the data or the
/// teacher dir cannot be read.
fn row_cost(exp: &Experiment, model: CostedModel) -> Option<f64> {
    let teacher = exp.teacher.as_ref()?;
    let dir = expand_path(&teacher.model);
    let (max_len, per_token) = match model {
        CostedModel::Teacher => {
            let c = BertConfig::load(&dir.join("config.json")).ok()?;
            // Q, K, V, output (4·h²) and the two feed-forward GEMMs (2·h·inner) per layer.
            (teacher.max_seq_len, c.num_hidden_layers * c.hidden_size * (4 * c.hidden_size + 2 * c.intermediate_size))
        }
        CostedModel::Student => {
            let student = exp.student.as_ref()?;
            // Four gates, both directions.
            (student.max_seq_len, 8 * student.hidden_size * (student.embedding_dim + student.hidden_size))
        }
    };
    let lengths = piece_lengths(exp, &dir, teacher.max_seq_len)?;
    let tokens: usize = lengths.iter().map(|&len| len.min(max_len)).sum();
    Some(tokens as f64 / lengths.len().max(1) as f64 * per_token as f64)
}

/// The training rows' lengths in the teacher's pieces, tokenized once per data and tokenizer
/// (a listing asks for them once per missing stage and for the run measured).
fn piece_lengths(exp: &Experiment, teacher_dir: &Path, max_len: usize) -> Option<Vec<usize>> {
    static SEEN: Mutex<Vec<(String, Option<Vec<usize>>)>> = Mutex::new(Vec::new());
    let key = format!("{:?} {:?} {} {max_len}", exp.task, exp.data, teacher_dir.display());
    remembered(&SEEN, key, || {
        let tokenizer = BertTokenizer::load(teacher_dir, max_len).ok()?;
        Some(TeacherSet::new(&training_split(exp)?, &tokenizer).ok()?.rows.iter().map(|(ids, _)| ids.len()).collect())
    })
}

/// `make()`, computed once per `key` in this process (a listing asks the same of every seed).
fn remembered<T: Clone>(seen: &Mutex<Vec<(String, T)>>, key: String, make: impl FnOnce() -> T) -> T {
    if let Some((_, value)) = seen.lock().ok().and_then(|seen| seen.iter().find(|(k, _)| *k == key).cloned()) {
        return value;
    }
    let value = make();
    if let Ok(mut seen) = seen.lock() {
        seen.push((key, value.clone()));
    }
    value
}

fn training_rows(exp: &Experiment) -> Option<usize> {
    Some(training_split(exp)?.examples.len())
}

fn training_split(exp: &Experiment) -> Option<Dataset> {
    let task = exp.task();
    crate::train::load_splits(exp, &task).ok().map(|(train, _)| train)
}

/// Whether the distill stage of `exp` finds its teacher's logits cached (three seeds over one
/// transfer set pay for the pass once); looked up once per teacher, data and `[augment]`.
fn logits_cached(exp: &Experiment) -> bool {
    static SEEN: Mutex<Vec<(String, bool)>> = Mutex::new(Vec::new());
    let key = format!("{} {:?} {:?} {:?} {} {:?} {}", exp.out_dir, exp.task, exp.data, exp.augment, exp.augment_seed(), exp.distill, stage_key(exp, Stage::Teacher));
    remembered(&SEEN, key, || crate::train::distill::teacher_logits_cached(exp).unwrap_or(false))
}

/// `teacher_pass_rows_per_s` of the newest finished distill stage of `task`.
fn last_teacher_pass_rate(out_dir: &Path, task: &str) -> Option<f64> {
    finished_runs(out_dir, Stage::Distill).into_iter().filter(|(_, f)| f.row.task == task).find_map(|(_, f)| {
        let mut reader = csv::Reader::from_path(f.dir.join("summary.csv")).ok()?;
        let column = reader.headers().ok()?.iter().position(|h| h == "teacher_pass_rows_per_s")?;
        reader.records().next()?.ok()?.get(column)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment(task: &str, data: &str, teacher_len: usize, student_len: usize) -> Option<Experiment> {
        let model = crate::config::distill_home().join("models/all-MiniLM-L6-v2");
        if !model.join("model.safetensors").is_file() {
            eprintln!("skipped: {} is missing; run scripts/setup", model.display());
            return None;
        }
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data").join(data);
        let text = format!(
            r#"name = "cost"
task = "{task}"
stages = ["teacher", "student"]
[data]
dir = "{data}"
train_limit = 40
dev_limit = 8
[vocab]
kind = "wordpiece"
tokenizer = "{model}"
[teacher]
model = "{model}"
max_seq_len = {teacher_len}
batch_size = 8
lr = 5e-5
epochs = 1
[student]
embedding_dim = 50
hidden_size = 30
max_seq_len = {student_len}
dropout = 0.1
optimizer = "adadelta"
lr = 1.0
batch_size = 8
epochs = 1
"#,
            data = data.display(),
            model = model.display()
        );
        Some(Experiment::parse(&text, "cost.toml", &[]).unwrap())
    }

    /// A student rate measured at 50d says how long a 300d student takes only once scaled by
    /// the two students' multiply-adds a token; a run of the same shape is taken as it is.
    #[test]
    fn the_estimate_scales_a_rate_measured_on_another_model_size() {
        let Some(narrow) = experiment("sst2", "SST-2", 128, 64) else {
            return;
        };
        let out = tempfile::tempdir().unwrap();
        let narrow = Experiment { out_dir: out.path().display().to_string(), ..narrow };
        let mut wide = narrow.clone();
        wide.student.as_mut().unwrap().embedding_dim = 300;
        let run_dir = out.path().join("measured");
        std::fs::create_dir(&run_dir).unwrap();
        std::fs::write(run_dir.join("config.toml"), narrow.to_toml()).unwrap();
        let row = ResultRow {
            experiment: "cost".into(),
            task: "sst2".into(),
            stage: "student".into(),
            params: 1,
            dev_accuracy: 0.5,
            dev_precision: 0.5,
            dev_recall: 0.5,
            dev_f1: 0.5,
            best_epoch: 1,
            train_time_s: 1.0,
            train_sentences_per_s: 20.0,
            eval_sentences_per_s: 1.0,
            config_hash: "h".into(),
            git_commit: "c".into(),
            run_dir: run_dir.display().to_string(),
            finished_at_unix: 1,
        };
        crate::report::append_result(&out.path().join("results.csv"), &row).unwrap();
        // 40 training rows, one epoch, at 20 sentences/s.
        assert_eq!(estimate_seconds(&narrow, Stage::Student), Some((2.0, "sst2".into(), false)));
        let (seconds, task, scaled) = estimate_seconds(&wide, Stage::Student).unwrap();
        // Hidden 30: 8·30·(300 + 30) against 8·30·(50 + 30) multiply-adds a token.
        assert!((seconds - 2.0 * 330.0 / 80.0).abs() < 1e-9 && task == "sst2" && scaled, "{seconds} {task} {scaled}");
        assert!(estimate_line(&wide, Stage::Student).contains("about 1 min") && estimate_line(&wide, Stage::Student).contains("scaled to this experiment's"));
    }

    #[test]
    fn row_cost_follows_length_and_model_size() {
        let (Some(sst2), Some(mrpc), Some(mrpc_cut)) =
            (experiment("sst2", "SST-2", 128, 64), experiment("mrpc", "MRPC", 128, 64), experiment("mrpc", "MRPC", 8, 4))
        else {
            return;
        };
        // MRPC pairs run to ~50 pieces, SST-2 phrases to ~13: a rate measured on one must be
        // scaled several times over for the other.
        let ratio = row_cost(&mrpc, CostedModel::Teacher).unwrap() / row_cost(&sst2, CostedModel::Teacher).unwrap();
        assert!(ratio > 2.0, "MRPC rows cost {ratio:.2}× SST-2's");
        // Every MRPC pair is longer than 8 pieces: cut there, a row is 8 tokens of the model's
        // multiply-adds (MiniLM: 6 layers, hidden 384, intermediate 1536).
        assert_eq!(row_cost(&mrpc_cut, CostedModel::Teacher).unwrap(), (8 * 6 * 384 * (4 * 384 + 2 * 1536)) as f64);
        assert_eq!(row_cost(&mrpc_cut, CostedModel::Student).unwrap(), (4 * 8 * 30 * (50 + 30)) as f64);
        let no_student = Experiment { student: None, ..mrpc_cut.clone() };
        assert_eq!(row_cost(&no_student, CostedModel::Teacher), row_cost(&mrpc_cut, CostedModel::Teacher));
        assert_eq!(row_cost(&no_student, CostedModel::Student), None);
        let no_teacher = Experiment { teacher: None, ..mrpc };
        assert_eq!(row_cost(&no_teacher, CostedModel::Student), None);
    }
}
