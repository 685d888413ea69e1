//! `distill table`: the paper-style results table (rows Teacher / Bi-LSTM / Distilled
//! Bi-LSTM, a column per task), as CSV and Markdown, with a footnote per cell saying what
//! differs from the seed (teacher model, vectors, vocab, n_iter). A table file
//! (`experiments/paper.toml`) names each column's experiment file and optional `--set`
//! overrides; each cell's stage key is computed from them (`train::stage_key`) and its result
//! is read from wherever that stage finished under the experiment's `out_dir`.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::config::{DistillConfig, DistillLoss, Experiment, Pooling, Stage, VectorsTeacher, Weighting};
use crate::files::write_atomic;
use crate::train::stage_key::{find_finished, stage_key, Lookup};

/// A table file: its columns, in order.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// Where table.md and table.csv go (`--out` overrides; default `runs`), so a second table
    /// file does not write over the paper's table.
    #[serde(default)]
    pub out: Option<std::path::PathBuf>,
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
    /// `--set` overrides of `file` for every cell of the column.
    #[serde(default)]
    pub set: Vec<String>,
    /// Training seeds: each cell is run once per seed (`--set seed=N` after the other
    /// overrides) and shows mean ± std over them. Empty: the file's seed, one run.
    #[serde(default)]
    pub seeds: Vec<u64>,
    /// A line printed under the table for this column.
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub seed: SeedSetup,
    #[serde(default)]
    pub teacher: CellSpec,
    #[serde(default)]
    pub student: CellSpec,
    #[serde(default)]
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

/// What fills a cell: the column's file with these `--set` overrides (after the column's
/// own); the cell's stage key is computed from the result.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellSpec {
    #[serde(default)]
    pub set: Vec<String>,
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
    pub const ALL: [RowKind; 3] = [RowKind::Teacher, RowKind::Student, RowKind::Distilled];

    pub fn title(self) -> &'static str {
        match self {
            RowKind::Teacher => "Teacher",
            RowKind::Student => "Bi-LSTM",
            RowKind::Distilled => "Distilled Bi-LSTM",
        }
    }

    pub fn stage(self) -> Stage {
        match self {
            RowKind::Teacher => Stage::Teacher,
            RowKind::Student => Stage::Student,
            RowKind::Distilled => Stage::Distill,
        }
    }
}

impl ColumnSpec {
    pub fn cell(&self, kind: RowKind) -> &CellSpec {
        match kind {
            RowKind::Teacher => &self.teacher,
            RowKind::Student => &self.student,
            RowKind::Distilled => &self.distilled,
        }
    }

    /// A cell's overrides: the column's, then the cell's own.
    fn sets(&self, kind: RowKind) -> impl Iterator<Item = &String> {
        self.set.iter().chain(&self.cell(kind).set)
    }

    /// The column's file with the column's and the cell's overrides, once per seed of
    /// `seeds` (once if it is empty).
    pub fn experiments(&self, kind: RowKind) -> Result<Vec<Experiment>> {
        let seeds: Vec<Option<u64>> = if self.seeds.is_empty() { vec![None] } else { self.seeds.iter().copied().map(Some).collect() };
        seeds
            .into_iter()
            .map(|seed| {
                let mut sets: Vec<String> = self.sets(kind).cloned().collect();
                sets.extend(seed.map(|s| format!("seed={s}")));
                Experiment::load(Path::new(&self.file), &sets).with_context(|| format!("column {:?}, row {}", self.title, kind.title()))
            })
            .collect()
    }

    /// The runs behind a row's cell: its experiments with their stage keys, one per distinct
    /// key — seeds that share the stage (a teacher with `teacher.seed` fixed) share one run.
    pub fn runs(&self, kind: RowKind) -> Result<Vec<(String, Experiment)>> {
        let mut runs: Vec<(String, Experiment)> = Vec::new();
        for exp in self.experiments(kind)? {
            let key = stage_key(&exp, kind.stage());
            if !runs.iter().any(|(k, _)| *k == key) {
                runs.push((key, exp));
            }
        }
        Ok(runs)
    }

    /// The stages a run must list to fill the cell (the distill stage needs its teacher stage
    /// unless `distill.teacher` names one; so does a student whose vectors that teacher makes),
    /// and the command that runs them.
    pub fn command(&self, kind: RowKind, exp: &Experiment) -> (Vec<Stage>, String) {
        let stages = match kind {
            RowKind::Distilled if exp.distill.as_ref().is_none_or(|d| d.teacher.is_none()) => vec![Stage::Teacher, Stage::Distill],
            RowKind::Student if exp.vectors_teacher() == Some(VectorsTeacher::Trained) => vec![Stage::Teacher, Stage::Student],
            _ => vec![kind.stage()],
        };
        let list: Vec<String> = stages.iter().map(|s| format!("\"{}\"", s.name())).collect();
        let mut sets: String = self.sets(kind).map(|s| format!(" --set '{s}'")).collect();
        if !self.seeds.is_empty() {
            sets.push_str(&format!(" --set seed={}", exp.seed));
        }
        (stages, format!("distill run {}{sets} --set 'stages=[{}]'", self.file, list.join(",")))
    }
}

/// One filled (or missing) cell.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cell {
    pub row: &'static str,
    pub column: String,
    /// As shown: `0.9002`, `0.8015/0.8674`, `0.8601 ± 0.0040` over seeds, or `—` when no
    /// run is there.
    pub value: String,
    /// Over the finished seeds: mean, and sample standard deviation (with two or more).
    pub dev_accuracy: Option<f64>,
    pub dev_accuracy_std: Option<f64>,
    pub dev_f1: Option<f64>,
    pub dev_f1_std: Option<f64>,
    /// Finished runs behind the value, of how many seeds.
    pub runs: usize,
    pub seeds: usize,
    /// The runs that trained the cell's stage, space-separated (empty while missing).
    pub run_id: String,
    /// The cell's stage keys (`train::stage_key`), one per distinct run, space-separated.
    pub stage_key: String,
    pub footnote: String,
}

impl TableSpec {
    /// The table's output dir: `--out` if given, else the file's `out`, else `runs`.
    pub fn out_dir(&self, given: Option<std::path::PathBuf>) -> std::path::PathBuf {
        given.or_else(|| self.out.clone()).unwrap_or_else(|| "runs".into())
    }

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

/// Builds every cell from the stages finished under each column's `out_dir`.
pub fn build(spec: &TableSpec) -> Result<Vec<Cell>> {
    let mut cells = Vec::new();
    for column in &spec.column {
        for kind in RowKind::ALL {
            cells.push(build_cell(column, kind)?);
        }
    }
    Ok(cells)
}

fn build_cell(column: &ColumnSpec, kind: RowKind) -> Result<Cell> {
    let spec = column.cell(kind);
    if let Some(reason) = &spec.pending {
        return Ok(Cell {
            row: kind.title(),
            column: column.title.clone(),
            value: "—".into(),
            dev_accuracy: None,
            dev_accuracy_std: None,
            dev_f1: None,
            dev_f1_std: None,
            runs: 0,
            seeds: column.seeds.len().max(1),
            run_id: String::new(),
            stage_key: String::new(),
            footnote: format!("pending: {reason}"),
        });
    }
    let runs = column.runs(kind)?;
    let mut notes = differences(&runs[0].1, kind, &column.seed);
    let seed_result = match kind {
        RowKind::Teacher => &column.seed.teacher_result,
        RowKind::Student => &column.seed.student_result,
        RowKind::Distilled => &column.seed.distilled_result,
    };
    if let Some(r) = seed_result {
        notes.push(format!("seed's result {r}"));
    }
    let (mut rows, mut missing) = (Vec::new(), Vec::new());
    for (_, exp) in &runs {
        match find_finished(exp, kind.stage()) {
            Lookup::Finished(found) => rows.push(found.row),
            Lookup::ReadOtherData { change, .. } => {
                missing.push(format!("its run read other data ({change}); to train it again: {} --force", column.command(kind, exp).1))
            }
            Lookup::Missing => missing.push(format!("not run yet: {}", column.command(kind, exp).1)),
        }
    }
    let accuracy = mean_std(rows.iter().map(|r| r.dev_accuracy));
    let f1 = mean_std(rows.iter().map(|r| r.dev_f1));
    let value = match (accuracy, f1) {
        (Some((a, _)), Some((f, _))) if column.seeds.is_empty() => {
            if column.pair { format!("{a:.4}/{f:.4}") } else { format!("{a:.4}") }
        }
        (Some((a, a_std)), Some((f, f_std))) => {
            let spread = |m: f64, s: Option<f64>| s.map_or(format!("{m:.4}"), |s| format!("{m:.4} ± {s:.4}"));
            if column.pair { format!("{}/{}", spread(a, a_std), spread(f, f_std)) } else { spread(a, a_std) }
        }
        _ => "—".into(),
    };
    if !column.seeds.is_empty() {
        let seeds: Vec<String> = column.seeds.iter().map(|s| s.to_string()).collect();
        let note = if runs.len() == 1 {
            format!("one run shared by seeds {} (this stage does not read the training seed)", seeds.join(", "))
        } else {
            format!("mean ± sample std over seeds {} (n = {} of {})", seeds.join(", "), rows.len(), runs.len())
        };
        notes.insert(0, note);
    }
    for note in missing.into_iter().rev() {
        notes.insert(0, note);
    }
    let run_ids: Vec<String> =
        rows.iter().map(|r| Path::new(&r.run_dir).file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()).collect();
    Ok(Cell {
        row: kind.title(),
        column: column.title.clone(),
        value,
        dev_accuracy: accuracy.map(|(m, _)| m),
        dev_accuracy_std: accuracy.and_then(|(_, s)| s),
        dev_f1: f1.map(|(m, _)| m),
        dev_f1_std: f1.and_then(|(_, s)| s),
        runs: rows.len(),
        seeds: column.seeds.len().max(1),
        run_id: run_ids.join(" "),
        stage_key: runs.iter().map(|(key, _)| key.as_str()).collect::<Vec<_>>().join(" "),
        footnote: notes.join("; "),
    })
}

/// Mean and sample standard deviation (`None` with fewer than two values); `None` if empty.
fn mean_std(values: impl Iterator<Item = f64>) -> Option<(f64, Option<f64>)> {
    let values: Vec<f64> = values.collect();
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.len() > 1).then(|| (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0)).sqrt());
    Some((mean, std))
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
        // The width, and for teacher-made vectors any setting off its default, so two cells
        // that differ only there do not read alike.
        let mut parts: Vec<String> = exp.student.iter().map(|s| format!("{}d", s.embedding_dim)).collect();
        if exp.embeddings.from_teacher() {
            let e = &exp.embeddings;
            parts.extend(e.layer.map(|n| format!("layer {n}")));
            parts.extend((e.pooling == Some(Pooling::Cls)).then(|| "[CLS]".to_string()));
            parts.extend((e.weighting == Some(Weighting::Sif)).then(|| "SIF-weighted".to_string()));
        }
        let shape = if parts.is_empty() { String::new() } else { format!(" ({})", parts.join(", ")) };
        let vectors = match (exp.vectors_teacher(), &exp.embeddings.path) {
            (Some(VectorsTeacher::Trained), _) => format!("made by the fine-tuned teacher{shape}"),
            (Some(VectorsTeacher::Dir(dir)), _) => format!("made by the teacher {}{shape}", base(&dir)),
            (Some(VectorsTeacher::Pretrained(model)), _) => format!("made by the pretrained {}{shape}", base(&model)),
            (None, Some(p)) => format!("{}{shape}", base(p)),
            (None, None) => "random init".into(),
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

    /// The command a missing cell prints trains the stage the cell looks for: the experiment
    /// loaded with the command's stage list has the cell's key, for every cell of the paper's
    /// table and for students whose vectors the fine-tuned teacher makes.
    #[test]
    fn a_cells_command_trains_the_stage_the_cell_looks_for() {
        let mut spec = TableSpec::load(Path::new("experiments/paper.toml")).unwrap();
        let teacher_vectors = TableSpec::parse(
            "[[column]]\ntitle = \"ChnSentiCorp, teacher-made vectors\"\nfile = \"experiments/chnsenticorp.toml\"\nset = [\"embeddings.source=\\\"teacher\\\"\", \"teacher.seed=1\"]\nseeds = [2]\n",
            "vectors.toml",
        )
        .unwrap();
        spec.column.extend(teacher_vectors.column);
        let mut checked = 0;
        for column in spec.column.iter().filter(|c| c.cell(RowKind::Teacher).pending.is_none()) {
            for kind in RowKind::ALL {
                for exp in column.experiments(kind).unwrap() {
                    let (stages, _) = column.command(kind, &exp);
                    let list: Vec<String> = stages.iter().map(|s| format!("\"{}\"", s.name())).collect();
                    let mut sets: Vec<String> = column.sets(kind).cloned().collect();
                    sets.push(format!("seed={}", exp.seed));
                    sets.push(format!("stages=[{}]", list.join(",")));
                    let run = Experiment::load(Path::new(&column.file), &sets).unwrap();
                    assert_eq!(stage_key(&run, kind.stage()), stage_key(&exp, kind.stage()), "{} / {}: {sets:?}", column.title, kind.title());
                    checked += 1;
                }
            }
        }
        assert!(checked >= 12, "{checked}");
    }

    #[test]
    fn a_second_table_file_writes_beside_the_papers() {
        let paper = TableSpec::load(Path::new("experiments/paper.toml")).unwrap();
        let vectors = TableSpec::load(Path::new("experiments/vectors.toml")).unwrap();
        assert_eq!(paper.out_dir(None), Path::new("runs"));
        assert_eq!(vectors.out_dir(None), Path::new("runs/vectors"));
        assert_eq!(vectors.out_dir(Some("elsewhere".into())), Path::new("elsewhere"));
    }

    #[test]
    fn footnotes_name_what_differs_from_the_seed() {
        let overrides = ["distill.alpha=0.7".to_string(), "distill.epochs=10".to_string()];
        let exp = Experiment::load(Path::new("experiments/sst2.toml"), &overrides).unwrap();
        let seed = SeedSetup { n_iter: Some(20), distill_epochs: Some(6), distill_loss: Some("mse".into()), ..Default::default() };
        let notes = differences(&exp, RowKind::Distilled, &seed);
        assert!(notes.contains(&"n_iter 10 (seed: 20)".to_string()), "{notes:?}");
        assert!(notes.contains(&"vectors made by the fine-tuned teacher (50d)".to_string()), "{notes:?}");
        assert!(notes.contains(&"epochs 10 (seed: 6)".to_string()), "{notes:?}");
        assert!(notes.contains(&"loss 0.7·ce + 0.3·mse (seed: mse)".to_string()), "{notes:?}");

        let same = SeedSetup { n_iter: Some(10), distill_epochs: Some(10), distill_loss: Some("0.7·ce + 0.3·mse".into()), ..Default::default() };
        let notes = differences(&exp, RowKind::Distilled, &same);
        assert!(!notes.iter().any(|n| n.starts_with("n_iter") || n.starts_with("epochs") || n.starts_with("loss")), "{notes:?}");

        let glove = ["embeddings={path=\"glove.6B.50d.txt\",format=\"glove\"}".to_string()];
        let notes = differences(&Experiment::load(Path::new("experiments/sst2.toml"), &glove).unwrap(), RowKind::Student, &seed);
        assert!(notes.contains(&"vectors glove.6B.50d.txt (50d)".to_string()), "{notes:?}");

        let off_default = ["embeddings={source=\"teacher\",layer=4,pooling=\"cls\",weighting=\"sif\"}".to_string()];
        let notes = differences(&Experiment::load(Path::new("experiments/sst2.toml"), &off_default).unwrap(), RowKind::Student, &seed);
        assert!(notes.contains(&"vectors made by the fine-tuned teacher (50d, layer 4, [CLS], SIF-weighted)".to_string()), "{notes:?}");
    }
}
