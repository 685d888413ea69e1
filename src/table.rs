//! `distill table`: the paper-style results table (rows Teacher / Bi-LSTM / Distilled
//! Bi-LSTM, a column per task) from `results.csv` files, as CSV and Markdown, with a
//! footnote per cell saying what differs from the seed (teacher model, vectors, vocab,
//! n_iter). Which run fills which cell is declared in a table file (`experiments/paper.toml`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::config::{expand_path, DistillConfig, DistillLoss, Experiment};
use crate::report::{read_results, ResultRow};
use crate::files::write_atomic;

/// A table file: its columns, in order.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    pub column: Vec<ColumnSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// The heading, e.g. "SST-2".
    pub title: String,
    /// Pair tasks show accuracy/F1, single-sentence tasks accuracy.
    #[serde(default)]
    pub pair: bool,
    /// The experiment file the cells' runs come from.
    pub file: String,
    /// A line printed under the table for this column.
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub seed: SeedSetup,
    pub teacher: CellSpec,
    pub student: CellSpec,
    pub distilled: CellSpec,
}

/// What the seed (PaddleNLP's distill_lstm) used and measured for a task; absent fields are
/// not compared.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedSetup {
    pub teacher: Option<String>,
    pub vectors: Option<String>,
    pub vocab: Option<String>,
    pub n_iter: Option<usize>,
    /// Epochs of the distillation stage.
    pub distill_epochs: Option<usize>,
    /// The distillation loss, as `loss_phrase` writes it ("mse", "0.5·ce + 0.5·mse", "kl T=2").
    pub distill_loss: Option<String>,
    /// The seed's dev figures for the three rows ("0.888", or "acc/F1").
    pub teacher_result: Option<String>,
    pub student_result: Option<String>,
    pub distilled_result: Option<String>,
}

/// Which run fills a cell: `--set` overrides of the column's file (the run id is the hash of
/// the resolved config, so this names exactly one run), or a run id written out.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellSpec {
    #[serde(default)]
    pub set: Vec<String>,
    pub run: Option<String>,
    /// Why this cell cannot be measured yet (shown as its footnote); no run is looked up.
    pub pending: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    Teacher,
    Student,
    Distilled,
}

impl RowKind {
    const ALL: [RowKind; 3] = [RowKind::Teacher, RowKind::Student, RowKind::Distilled];

    fn title(self) -> &'static str {
        match self {
            RowKind::Teacher => "Teacher",
            RowKind::Student => "Bi-LSTM",
            RowKind::Distilled => "Distilled Bi-LSTM",
        }
    }

    fn stage(self) -> &'static str {
        match self {
            RowKind::Teacher => "teacher",
            RowKind::Student => "student",
            RowKind::Distilled => "distill",
        }
    }
}

/// One filled (or missing) cell.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cell {
    pub row: &'static str,
    pub column: String,
    /// As shown: `0.9002`, `0.8015/0.8674`, or `—` when the run is missing.
    pub value: String,
    pub dev_accuracy: Option<f64>,
    pub dev_f1: Option<f64>,
    pub run_id: String,
    pub footnote: String,
}

impl TableSpec {
    pub fn load(path: &Path) -> Result<TableSpec> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read the table file", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, file: &str) -> Result<TableSpec> {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1).unwrap_or(0);
            anyhow::anyhow!("{file}:{line}: not valid TOML: {}", e.message())
        })?;
        serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| anyhow::anyhow!("{file}: key `{}`: {}", e.path(), e.inner()))
    }
}

/// Builds every cell from the rows of `results` (the latest row per run and stage wins).
pub fn build(spec: &TableSpec, results: &[PathBuf]) -> Result<Vec<Cell>> {
    let mut rows: Vec<ResultRow> = Vec::new();
    for file in results {
        if file.is_file() {
            rows.extend(read_results(file)?);
        } else {
            eprintln!("{}: no such results file; skipped", file.display());
        }
    }
    let mut cells = Vec::new();
    for column in &spec.column {
        for kind in RowKind::ALL {
            cells.push(build_cell(column, kind, &rows)?);
        }
    }
    Ok(cells)
}

fn build_cell(column: &ColumnSpec, kind: RowKind, rows: &[ResultRow]) -> Result<Cell> {
    let spec = match kind {
        RowKind::Teacher => &column.teacher,
        RowKind::Student => &column.student,
        RowKind::Distilled => &column.distilled,
    };
    if let Some(reason) = &spec.pending {
        return Ok(Cell {
            row: kind.title(),
            column: column.title.clone(),
            value: "—".into(),
            dev_accuracy: None,
            dev_f1: None,
            run_id: String::new(),
            footnote: format!("pending: {reason}"),
        });
    }
    let file = Path::new(&column.file);
    let declared = Experiment::load(file, &spec.set).with_context(|| format!("column {:?}, row {}", column.title, kind.title()))?;
    let run_id = spec.run.clone().unwrap_or_else(|| format!("{}-{}", declared.name, declared.config_hash()));
    // The config the run really used (saved in its dir) describes the cell; the declared
    // one stands in while the run is missing.
    let run_dir = expand_path(&declared.out_dir).join(&run_id);
    let used = Experiment::load(&run_dir.join("config.toml"), &[]).unwrap_or(declared);

    let found = rows
        .iter()
        .filter(|r| r.stage == kind.stage() && Path::new(&r.run_dir).file_name().is_some_and(|n| n.to_string_lossy() == run_id))
        .max_by_key(|r| r.finished_at_unix);
    let mut notes = differences(&used, kind, &column.seed);
    let seed_result = match kind {
        RowKind::Teacher => &column.seed.teacher_result,
        RowKind::Student => &column.seed.student_result,
        RowKind::Distilled => &column.seed.distilled_result,
    };
    if let Some(r) = seed_result {
        notes.push(format!("seed's result {r}"));
    }
    let (value, accuracy, f1) = match found {
        Some(r) if column.pair => (format!("{:.4}/{:.4}", r.dev_accuracy, r.dev_f1), Some(r.dev_accuracy), Some(r.dev_f1)),
        Some(r) => (format!("{:.4}", r.dev_accuracy), Some(r.dev_accuracy), Some(r.dev_f1)),
        None => {
            let command = if spec.run.is_some() {
                format!("run {run_id} is not in the results files")
            } else {
                let sets: String = spec.set.iter().map(|s| format!(" --set '{s}'")).collect();
                format!("not run yet: distill run {}{sets}", column.file)
            };
            notes.insert(0, command);
            ("—".to_string(), None, None)
        }
    };
    Ok(Cell {
        row: kind.title(),
        column: column.title.clone(),
        value,
        dev_accuracy: accuracy,
        dev_f1: f1,
        run_id,
        footnote: notes.join("; "),
    })
}

/// What a cell's run did differently from the seed, as short phrases.
fn differences(exp: &Experiment, kind: RowKind, seed: &SeedSetup) -> Vec<String> {
    let base = |p: &str| Path::new(p).file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| p.to_string());
    let mut notes = Vec::new();
    let mut compare = |what: &str, ours: String, theirs: &Option<String>| match theirs {
        Some(t) if *t != ours => notes.push(format!("{what} {ours} (seed: {t})")),
        Some(_) => {}
        None => notes.push(format!("{what} {ours}")),
    };
    let teacher_model = match kind {
        RowKind::Distilled => exp.distill.as_ref().and_then(|d| d.teacher.clone()).or_else(|| exp.teacher.as_ref().map(|t| t.model.clone())),
        _ => exp.teacher.as_ref().map(|t| t.model.clone()),
    };
    if kind != RowKind::Student {
        compare("teacher", teacher_model.as_deref().map(base).unwrap_or_else(|| "none".into()), &seed.teacher);
    }
    if kind != RowKind::Teacher {
        let vectors = match (&exp.embeddings.path, exp.student.as_ref()) {
            (Some(p), Some(s)) => format!("{} ({}d)", base(p), s.embedding_dim),
            (Some(p), None) => base(p),
            (None, _) => "random init".into(),
        };
        compare("vectors", vectors, &seed.vectors);
        let vocab = match (&exp.vocab.kind, &exp.vocab.tokenizer) {
            (crate::config::VocabKind::Wordpiece, Some(t)) => format!("WordPiece of {}", base(t)),
            (kind, _) => format!("{kind:?}").to_lowercase(),
        };
        compare("vocab", vocab, &seed.vocab);
    }
    if kind == RowKind::Distilled {
        compare("n_iter", exp.augment.n_iter.to_string(), &seed.n_iter.map(|n| n.to_string()));
        if let Some(d) = &exp.distill {
            compare("epochs", d.epochs.to_string(), &seed.distill_epochs.map(|n| n.to_string()));
            compare("loss", loss_phrase(d), &seed.distill_loss);
        }
    }
    notes
}

/// The distillation loss in a few characters: "mse", "0.5·ce + 0.5·mse", "kl T=2".
fn loss_phrase(d: &DistillConfig) -> String {
    let soft = match d.loss {
        DistillLoss::Mse => "mse".to_string(),
        DistillLoss::Kl => format!("kl T={}", d.temperature),
        DistillLoss::Ce => return "ce".into(),
    };
    // Rounded so that 1 − 0.7 prints as 0.3.
    let weight = |w: f64| (w * 1000.0).round() / 1000.0;
    if d.alpha > 0.0 { format!("{}·ce + {}·{soft}", weight(d.alpha), weight(1.0 - d.alpha)) } else { soft }
}

/// Writes `table.csv` (one line per cell, with its run and footnote) and `table.md` (the
/// wide table and numbered footnotes) into `out_dir`; returns the Markdown.
pub fn write(spec: &TableSpec, cells: &[Cell], out_dir: &Path) -> Result<String> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for cell in cells {
        writer.serialize(cell)?;
    }
    write_atomic(&out_dir.join("table.csv"), &writer.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?;

    let mut md = String::from("| |");
    for c in &spec.column {
        md.push_str(&format!(" {} ({}) |", c.title, if c.pair { "acc/F1" } else { "acc" }));
    }
    md.push_str(&format!("\n|---|{}\n", "---|".repeat(spec.column.len())));
    let mut footnotes = Vec::new();
    for kind in RowKind::ALL {
        md.push_str(&format!("| {} |", kind.title()));
        for c in &spec.column {
            let cell = cells.iter().find(|x| x.row == kind.title() && x.column == c.title).context("every cell is built")?;
            footnotes.push(format!("[{}] {} / {}: {}", footnotes.len() + 1, c.title, kind.title(), cell.footnote));
            md.push_str(&format!(" {} [{}] |", cell.value, footnotes.len()));
        }
        md.push('\n');
    }
    md.push('\n');
    for line in &footnotes {
        md.push_str(&format!("{line}  \n"));
    }
    for c in &spec.column {
        if let Some(note) = &c.note {
            md.push_str(&format!("{}: {note}  \n", c.title));
        }
    }
    write_atomic(&out_dir.join("table.md"), md.as_bytes())?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distilled_footnote_names_epochs_and_loss_that_differ_from_the_seed() {
        let overrides = ["distill.alpha=0.7".to_string(), "distill.epochs=10".to_string()];
        let exp = Experiment::load(Path::new("experiments/sst2.toml"), &overrides).unwrap();
        let seed = SeedSetup { n_iter: Some(20), distill_epochs: Some(6), distill_loss: Some("mse".into()), ..Default::default() };
        let notes = differences(&exp, RowKind::Distilled, &seed);
        assert!(notes.contains(&"n_iter 10 (seed: 20)".to_string()), "{notes:?}");
        assert!(notes.contains(&"epochs 10 (seed: 6)".to_string()), "{notes:?}");
        assert!(notes.contains(&"loss 0.7·ce + 0.3·mse (seed: mse)".to_string()), "{notes:?}");

        let same = SeedSetup { n_iter: Some(10), distill_epochs: Some(10), distill_loss: Some("0.7·ce + 0.3·mse".into()), ..Default::default() };
        let notes = differences(&exp, RowKind::Distilled, &same);
        assert!(!notes.iter().any(|n| n.starts_with("n_iter") || n.starts_with("epochs") || n.starts_with("loss")), "{notes:?}");
    }
}
