//! Grid sweeps: an experiment file with a `[sweep]` table of `"key.path" = [values]` runs the
//! Cartesian product of those values. Each point is an ordinary run whose id is the hash of
//! its resolved config, so a rerun skips finished points (and finished stages of a point
//! that was interrupted). `--shard I/N` (or a Slurm job array) runs every N-th point; each
//! shard writes its own file under `SWEEP_DIR/shards/`, and `distill report SWEEP_DIR`
//! merges them into one table and plots.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::config::{expand_path, line_of_key, set_key, ConfigError, Experiment, Stage};
use crate::plots::{sweep_parameter, SweepPoint};
use crate::report::{read_results, ResultRow};
use crate::files::write_atomic;
use crate::train::stage_key::find_finished;
use crate::train::{run_experiment_with, Retrain};

/// A grid of experiments declared in one file.
pub struct Sweep {
    pub name: String,
    /// Swept keys (sorted) and their values.
    pub axes: Vec<(String, Vec<toml::Value>)>,
    pub points: Vec<GridPoint>,
    /// `OUT_DIR/sweeps/NAME-HASH`: the point list, shard results, merged report and plots.
    pub dir: PathBuf,
}

/// One experiment of the grid.
pub struct GridPoint {
    pub index: usize,
    /// `(key, value)` for each axis.
    pub values: Vec<(String, toml::Value)>,
    pub experiment: Experiment,
    /// The run dir's name, `NAME-CONFIGHASH`.
    pub run_id: String,
}

impl GridPoint {
    pub fn describe(&self) -> String {
        self.values.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    }

    pub fn run_dir(&self) -> PathBuf {
        expand_path(&self.experiment.out_dir).join(&self.run_id)
    }

    /// How far this point's run got: (finished stages, all stages). A stage finished in
    /// another run with the same key (see `train::stage_key`) counts: it will be reused.
    pub fn progress(&self) -> (usize, usize) {
        let stages = &self.experiment.stages;
        let done = stages
            .iter()
            .filter(|&&s| find_finished(&self.experiment, s).finished().is_some())
            .count();
        (done, stages.len())
    }
}

/// Which slice of the grid this process runs: points with `index % count == index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// `I/N` with `0 <= I < N`.
    pub fn parse(text: &str) -> Result<Shard> {
        let parsed = text.split_once('/').and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if count > 0 && index < count => Ok(Shard { index, count }),
            _ => bail!("--shard {text}: expected I/N with 0 <= I < N, e.g. 0/4"),
        }
    }

    /// The shard of a Slurm job array task (`--array=0-3` or `1-4`: the task's position in
    /// the array), if this process is one.
    pub fn from_slurm() -> Result<Option<Shard>> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (Some(id), Some(count)) = (var("SLURM_ARRAY_TASK_ID"), var("SLURM_ARRAY_TASK_COUNT")) else {
            return Ok(None);
        };
        let number = |name: &str, v: &str| -> Result<usize> {
            v.parse().with_context(|| format!("{name}={v}: not a number"))
        };
        let id = number("SLURM_ARRAY_TASK_ID", &id)?;
        let count = number("SLURM_ARRAY_TASK_COUNT", &count)?;
        let min = match var("SLURM_ARRAY_TASK_MIN") {
            Some(v) => number("SLURM_ARRAY_TASK_MIN", &v)?,
            None => 0,
        };
        let index = id.checked_sub(min).filter(|&i| i < count).with_context(|| {
            format!("SLURM_ARRAY_TASK_ID={id} is outside the array (min {min}, count {count}); use a contiguous --array range")
        })?;
        Ok(Some(Shard { index, count }))
    }

    pub fn contains(&self, point: usize) -> bool {
        point % self.count == self.index
    }

    fn file_name(&self) -> String {
        format!("results-{}-of-{}.csv", self.index, self.count)
    }
}

impl Sweep {
    /// Reads a sweep file: an experiment plus `[sweep]`. `overrides` apply to every point.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Sweep> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).with_context(|| format!("{file}: cannot read the sweep file"))?;
        let err = |line: Option<usize>, key: &str, message: String| ConfigError {
            file: file.clone(),
            line,
            key: Some(key.to_string()),
            message,
        };
        let mut base: toml::Table = toml::from_str(&text).map_err(|e| ConfigError {
            file: file.clone(),
            line: e.span().map(|s| text[..s.start].matches('\n').count() + 1),
            key: None,
            message: format!("not valid TOML: {}", e.message()),
        })?;
        let grid = match base.remove("sweep") {
            Some(toml::Value::Table(t)) if !t.is_empty() => t,
            Some(_) => return Err(err(line_of_key(&text, "sweep"), "sweep", "must be a table of \"key.path\" = [values]".into()).into()),
            None => {
                return Err(err(
                    None,
                    "sweep",
                    "no [sweep] table; add one mapping config keys to lists, e.g. \"student.lr\" = [0.5, 1.0] (or use `distill run`)"
                        .into(),
                )
                .into())
            }
        };
        for item in overrides {
            crate::config::apply_override(&mut base, item).map_err(|m| anyhow::anyhow!("{file}: --set {item}: {m}"))?;
        }
        let mut axes = Vec::new();
        for (key, values) in grid {
            let line = line_of_quoted_key(&text, &key);
            match values {
                toml::Value::Array(values) if !values.is_empty() => axes.push((key, values)),
                _ => return Err(err(line, &format!("sweep.\"{key}\""), "must be a non-empty list of values".into()).into()),
            }
        }

        let mut points = Vec::new();
        for (index, values) in cartesian(&axes).into_iter().enumerate() {
            let mut table = base.clone();
            for (key, value) in &values {
                set_key(&mut table, key, value.clone()).map_err(|m| err(line_of_quoted_key(&text, key), key, m))?;
            }
            let described = values.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
            let experiment = Experiment::from_table(table, &text, &file)
                .map_err(|e| anyhow::anyhow!("sweep point {index} ({described}): {e}"))?;
            let run_id = format!("{}-{}", experiment.name, experiment.config_hash());
            points.push(GridPoint { index, values, experiment, run_id });
        }
        let name = points[0].experiment.name.clone();
        let mut hasher = Sha256::new();
        hasher.update(toml::to_string(&base).unwrap_or_default());
        for (key, values) in &axes {
            hasher.update(format!("{key}={values:?}\n"));
        }
        let hash: String = hasher.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect();
        let dir = expand_path(&points[0].experiment.out_dir).join("sweeps").join(format!("{name}-{hash}"));
        Ok(Sweep { name, axes, points, dir })
    }

    /// Prints the points (with their shard and how far each got) without running anything.
    pub fn print_plan(&self, shard: Shard) {
        println!("sweep {}: {} points → {}", self.name, self.points.len(), self.dir.display());
        for p in &self.points {
            let (done, all) = p.progress();
            let state = match done {
                0 if p.run_dir().is_dir() => "interrupted: will rerun".to_string(),
                0 => "not started".to_string(),
                d if d == all => "finished".to_string(),
                d => format!("{d}/{all} stages finished"),
            };
            let mine = if shard.contains(p.index) { "" } else { " (other shard)" };
            println!("  {:>3}  {}  {}  [{state}]{mine}", p.index, p.run_id, p.describe());
        }
    }

    /// Runs this shard's points in order; finished points and stages are skipped by
    /// `run_experiment`. The shard file is rewritten after every point.
    pub fn run(&self, shard: Shard) -> Result<()> {
        self.write_points()?;
        let shard_file = self.dir.join("shards").join(shard.file_name());
        let mine: Vec<&GridPoint> = self.points.iter().filter(|p| shard.contains(p.index)).collect();
        eprintln!(
            "sweep {}: shard {}/{} runs {} of {} points; results in {}",
            self.name,
            shard.index,
            shard.count,
            mine.len(),
            self.points.len(),
            shard_file.display()
        );
        let mut rows: Vec<ResultRow> = Vec::new();
        for (done, point) in mine.iter().enumerate() {
            eprintln!("sweep point {} ({} of {} in this shard): {}", point.index, done + 1, mine.len(), point.describe());
            // A point whose stages read other data than the files now hold trains them again.
            let point_rows = run_experiment_with(point.experiment.clone(), Retrain::OtherData)
                .with_context(|| format!("sweep point {} ({})", point.index, point.describe()))?;
            rows.extend(point_rows);
            write_atomic(&shard_file, &crate::report::csv_bytes(&rows)?)?;
        }
        Ok(())
    }

    /// `SWEEP_DIR/points.csv`: index, run id and each swept value (as TOML) per point.
    fn write_points(&self) -> Result<()> {
        let mut writer = csv::Writer::from_writer(Vec::new());
        let mut header = vec!["index".to_string(), "run_id".to_string()];
        header.extend(self.axes.iter().map(|(k, _)| k.clone()));
        writer.write_record(&header)?;
        for p in &self.points {
            let mut record = vec![p.index.to_string(), p.run_id.clone()];
            record.extend(p.values.iter().map(|(_, v)| v.to_string()));
            writer.write_record(&record)?;
        }
        write_atomic(&self.dir.join("points.csv"), &writer.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)
    }
}

/// All combinations, the last axis changing fastest.
fn cartesian(axes: &[(String, Vec<toml::Value>)]) -> Vec<Vec<(String, toml::Value)>> {
    let mut out: Vec<Vec<(String, toml::Value)>> = vec![Vec::new()];
    for (key, values) in axes {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut next = prefix.clone();
                    next.push((key.clone(), v.clone()));
                    next
                })
            })
            .collect();
    }
    out
}

/// The line of `"key.path" = …` inside `[sweep]`.
fn line_of_quoted_key(text: &str, key: &str) -> Option<usize> {
    let mut in_sweep = false;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            in_sweep = line == "[sweep]";
        } else if in_sweep && line.split('=').next().is_some_and(|k| k.trim().trim_matches('"') == key) {
            return Some(i + 1);
        }
    }
    None
}

/// One line of a sweep's `summary.csv`: the point, its swept values and the metrics of a
/// stage. No times, so that sharded and unsharded runs of a grid give the same table.
#[derive(Debug, Clone)]
pub struct SummaryLine {
    pub index: usize,
    pub run_id: String,
    pub values: Vec<String>,
    pub row: ResultRow,
}

/// Merges a sweep's shard files into `results.csv`, `summary.csv`, `summary.md` and one
/// `dev-vs-KEY.svg` per swept key, all in `sweep_dir`. Returns the summary lines.
pub fn report(sweep_dir: &Path) -> Result<Vec<SummaryLine>> {
    let points_file = sweep_dir.join("points.csv");
    let mut reader = csv::Reader::from_path(&points_file)
        .with_context(|| format!("{}: cannot read; is this a sweep dir (OUT_DIR/sweeps/NAME-HASH)?", points_file.display()))?;
    let header: Vec<String> = reader.headers()?.iter().map(String::from).collect();
    if header.len() < 2 || header[0] != "index" || header[1] != "run_id" {
        bail!("{}: not a points.csv written by distill sweep", points_file.display());
    }
    let keys = header[2..].to_vec();
    let mut points: Vec<(usize, String, Vec<String>)> = Vec::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}:{}: unreadable", points_file.display(), line + 2))?;
        let index = record[0].parse().with_context(|| format!("{}:{}: bad index", points_file.display(), line + 2))?;
        points.push((index, record[1].to_string(), record.iter().skip(2).map(String::from).collect()));
    }

    // The latest row of each (run, stage) over all shard files.
    let mut latest: HashMap<(String, String), ResultRow> = HashMap::new();
    let shard_dir = sweep_dir.join("shards");
    let mut shard_files: Vec<PathBuf> = match std::fs::read_dir(&shard_dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "csv")).collect(),
        Err(_) => Vec::new(),
    };
    shard_files.sort();
    for file in &shard_files {
        for row in read_results(file)? {
            let run_id = Path::new(&row.run_dir).file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            let key = (run_id, row.stage.clone());
            if latest.get(&key).is_none_or(|r| r.finished_at_unix <= row.finished_at_unix) {
                latest.insert(key, row);
            }
        }
    }

    let stage_order = [Stage::Teacher, Stage::Student, Stage::Distill].map(|s| s.name());
    let mut lines = Vec::new();
    let mut missing = Vec::new();
    for (index, run_id, values) in &points {
        let mut found = false;
        for stage in stage_order {
            if let Some(row) = latest.get(&(run_id.clone(), stage.to_string())) {
                lines.push(SummaryLine { index: *index, run_id: run_id.clone(), values: values.clone(), row: row.clone() });
                found = true;
            }
        }
        if !found {
            missing.push(*index);
        }
    }

    let rows: Vec<&ResultRow> = lines.iter().map(|l| &l.row).collect();
    write_atomic(&sweep_dir.join("results.csv"), &crate::report::csv_bytes(&rows)?)?;
    let mut header = vec!["index".to_string(), "run_id".to_string()];
    header.extend(keys.iter().cloned());
    header.extend(["stage", "params", "best_epoch", "dev_accuracy", "dev_f1"].map(String::from));
    let cells = |l: &SummaryLine| -> Vec<String> {
        let mut c = vec![l.index.to_string(), l.run_id.clone()];
        c.extend(l.values.iter().cloned());
        c.push(l.row.stage.clone());
        c.push(l.row.params.to_string());
        c.push(l.row.best_epoch.to_string());
        c.push(format!("{:.4}", l.row.dev_accuracy));
        c.push(format!("{:.4}", l.row.dev_f1));
        c
    };
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(&header)?;
    for l in &lines {
        writer.write_record(cells(l))?;
    }
    write_atomic(&sweep_dir.join("summary.csv"), &writer.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?;
    let mut md = format!("| {} |\n|{}\n", header.join(" | "), "---|".repeat(header.len()));
    for l in &lines {
        md.push_str(&format!("| {} |\n", cells(l).join(" | ")));
    }
    if !missing.is_empty() {
        md.push_str(&format!("\nNot finished yet: points {missing:?}.\n"));
    }
    write_atomic(&sweep_dir.join("summary.md"), md.as_bytes())?;

    // The last stage each point ran is the one the sweep is about (distill over student).
    let mut final_rows: Vec<&SummaryLine> = Vec::new();
    for l in &lines {
        match final_rows.last() {
            Some(prev) if prev.index == l.index => *final_rows.last_mut().expect("non-empty") = l,
            _ => final_rows.push(l),
        }
    }
    let pair_task = final_rows.first().is_some_and(|l| l.row.task == "mrpc" || l.row.task == "qqp");
    let metric_name = if pair_task { "dev F1" } else { "dev accuracy" };
    for (k, key) in keys.iter().enumerate() {
        let points: Vec<SweepPoint> = final_rows
            .iter()
            .map(|l| SweepPoint {
                value: l.values[k].clone(),
                numeric: l.values[k].parse().ok(),
                metric: if pair_task { l.row.dev_f1 } else { l.row.dev_accuracy },
            })
            .collect();
        if !points.is_empty() {
            let file: String = key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' }).collect();
            sweep_parameter(&sweep_dir.join(format!("dev-vs-{file}.svg")), key, metric_name, &points)?;
        }
    }
    eprintln!(
        "sweep report: {} of {} points finished ({} shard files) → {}",
        points.len() - missing.len(),
        points.len(),
        shard_files.len(),
        sweep_dir.join("summary.md").display()
    );
    Ok(lines)
}
