//! Training stages and what they share: the run directory, encoded data, batching, evaluation.

pub mod distill;
pub mod student;
pub mod teacher;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use dfdx::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;

use crate::config::{expand_path, Experiment, Stage};
use crate::augment::{join_words, TransferExample};
use crate::data::{load_split, Dataset, Language, LoadOptions, Task};
use crate::metrics::{argmax_rows, Metrics};
use crate::models::bilstm::{BiLstmStudent, StudentInput, TokenBatch};
use crate::report::{append_result, git_commit, unix_now, write_atomic, ResultRow};
use crate::tokenize::TextEncoder;

/// A run's folder and identity.
pub struct RunContext {
    pub experiment: Experiment,
    pub config_hash: String,
    pub run_dir: PathBuf,
    pub results_csv: PathBuf,
}

impl RunContext {
    /// Creates `OUT_DIR/NAME-HASH/` and saves the resolved config there.
    pub fn create(experiment: Experiment) -> Result<RunContext> {
        let config_hash = experiment.config_hash();
        let out_dir = expand_path(&experiment.out_dir);
        let run_dir = out_dir.join(format!("{}-{}", experiment.name, config_hash));
        std::fs::create_dir_all(&run_dir).with_context(|| format!("{}: cannot create", run_dir.display()))?;
        write_atomic(&run_dir.join("config.toml"), experiment.to_toml().as_bytes())?;
        Ok(RunContext { experiment, config_hash, results_csv: out_dir.join("results.csv"), run_dir })
    }
}

impl RunContext {
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
            task: format!("{:?}", self.experiment.task).to_lowercase(),
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
            git_commit: git_commit(),
            run_dir: self.run_dir.display().to_string(),
            finished_at_unix: unix_now(),
        }
    }
}

/// Runs every stage an experiment lists; returns one result row per stage.
///
/// A stage that already finished in this run dir (same resolved config, so same run id) is
/// not run again: its row is read back from `RUN_DIR/STAGE/result.json`. So a rerun after
/// an interruption picks up at the first unfinished stage. `force` reruns everything.
pub fn run_experiment(experiment: Experiment) -> Result<Vec<ResultRow>> {
    run_experiment_with(experiment, false)
}

pub fn run_experiment_with(experiment: Experiment, force: bool) -> Result<Vec<ResultRow>> {
    if experiment.device == crate::config::DeviceName::Cuda {
        // Before the run dir exists, so a machine without a GPU leaves nothing behind.
        crate::gpu::driver_present()?;
    }
    let ctx = RunContext::create(experiment)?;
    eprintln!("run {} → {}", ctx.experiment.name, ctx.run_dir.display());
    let mut rows = Vec::new();
    for stage in ctx.experiment.stages.clone() {
        let marker = stage_result_path(&ctx.run_dir, stage);
        if !force {
            if let Some(row) = finished_stage(&marker)? {
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
        }
        let row = match stage {
            Stage::Teacher => teacher::train_teacher(&ctx)?,
            Stage::Student => student::train_student(&ctx)?,
            Stage::Distill => distill::train_distilled(&ctx)?,
        };
        append_result(&ctx.results_csv, &row)?;
        write_atomic(&marker, serde_json::to_string_pretty(&row)?.as_bytes())?;
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

/// `RUN_DIR/STAGE/result.json`: written last, so it exists only for a finished stage.
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

/// A split turned into student token ids.
#[derive(Debug, Clone, Default)]
pub struct EncodedSet {
    pub a: Vec<Vec<u32>>,
    pub b: Option<Vec<Vec<u32>>>,
    pub labels: Vec<usize>,
}

impl EncodedSet {
    pub fn new(ds: &Dataset, encoder: &TextEncoder, max_len: usize) -> EncodedSet {
        let texts_a: Vec<&str> = ds.examples.iter().map(|e| e.text_a.as_str()).collect();
        let texts_b: Option<Vec<&str>> = ds
            .examples
            .iter()
            .any(|e| e.text_b.is_some())
            .then(|| ds.examples.iter().map(|e| e.text_b.as_deref().unwrap_or("")).collect());
        let labels = ds.examples.iter().map(|e| e.label).collect();
        Self::from_texts(&texts_a, texts_b.as_deref(), labels, encoder, max_len)
    }

    /// Texts (and second texts of pairs) as student ids, cut to `max_len` tokens.
    pub fn from_texts(a: &[&str], b: Option<&[&str]>, labels: Vec<usize>, encoder: &TextEncoder, max_len: usize) -> EncodedSet {
        let encode = |texts: &[&str]| -> Vec<Vec<u32>> {
            let mut ids = encoder.encode_all(texts);
            ids.iter_mut().for_each(|i| i.truncate(max_len));
            ids
        };
        EncodedSet { a: encode(a), b: b.map(encode), labels }
    }

    /// The transfer set as student ids: WordPiece reads the joined text (the mask token is
    /// one of its special tokens); jieba vocabularies look each word up directly, so the
    /// student sees exactly the words the augmenter produced.
    pub fn from_transfer(rows: &[TransferExample], encoder: &TextEncoder, language: Language, max_len: usize) -> EncodedSet {
        let encode = |words: &[String]| -> Vec<u32> {
            let mut ids = match encoder {
                TextEncoder::WordPiece { .. } => encoder.encode(&join_words(words, language)),
                TextEncoder::Jieba { vocab, .. } => words.iter().map(|w| vocab.id(w)).collect(),
            };
            ids.truncate(max_len);
            ids
        };
        let a = rows.par_iter().map(|r| encode(&r.a)).collect();
        let b = rows
            .iter()
            .any(|r| r.b.is_some())
            .then(|| rows.par_iter().map(|r| encode(r.b.as_deref().unwrap_or(&[]))).collect());
        EncodedSet { a, b, labels: rows.iter().map(|r| r.label).collect() }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The model input for the examples at `indices`; an empty text reads as `empty_id`.
    pub fn input(&self, indices: &[usize], empty_id: u32) -> StudentInput {
        let mut seqs: Vec<&[u32]> = indices.iter().map(|&i| self.a[i].as_slice()).collect();
        if let Some(b) = &self.b {
            seqs.extend(indices.iter().map(|&i| b[i].as_slice()));
        }
        StudentInput { tokens: TokenBatch::new(&seqs, empty_id), examples: indices.len() }
    }

    fn length(&self, i: usize) -> usize {
        self.a[i].len() + self.b.as_ref().map_or(0, |b| b[i].len())
    }
}

/// Shuffled batches of example indices for one epoch.
pub fn shuffled_batches(n: usize, batch_size: usize, rng: &mut StdRng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    order.chunks(batch_size).map(|c| c.to_vec()).collect()
}

/// Dev-set evaluation result.
pub struct Evaluation {
    pub metrics: Metrics,
    pub loss: f64,
    pub sentences_per_s: f64,
}

/// Evaluates the student on `set` in length-sorted batches (similar lengths pack densely).
pub fn evaluate(model: &BiLstmStudent, set: &EncodedSet, empty_id: u32, batch_size: usize) -> Evaluation {
    evaluate_with(set, empty_id, batch_size, model.shape.num_labels, |input| Ok(model.predict_logits(input)))
        .expect("CPU prediction cannot fail")
}

/// [`evaluate`] with any predictor of logits (the CPU student, or the GPU one).
pub fn evaluate_with(
    set: &EncodedSet,
    empty_id: u32,
    batch_size: usize,
    classes: usize,
    mut predict: impl FnMut(&crate::models::bilstm::StudentInput) -> Result<Vec<f32>>,
) -> Result<Evaluation> {
    let mut order: Vec<usize> = (0..set.len()).collect();
    order.sort_by_key(|&i| set.length(i));
    let mut logits = vec![0f32; set.len() * classes];
    let start = Instant::now();
    for chunk in order.chunks(batch_size) {
        let out = predict(&set.input(chunk, empty_id))?;
        for (row, &i) in chunk.iter().enumerate() {
            logits[i * classes..(i + 1) * classes].copy_from_slice(&out[row * classes..(row + 1) * classes]);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let loss = mean_cross_entropy(&logits, &set.labels, classes);
    let predictions = argmax_rows(&logits, classes);
    Ok(Evaluation {
        metrics: Metrics::compute(&predictions, &set.labels, classes),
        loss,
        sentences_per_s: set.len() as f64 / elapsed.max(1e-9),
    })
}

/// Mean softmax cross-entropy of `logits` (`rows × classes`) against gold labels.
pub fn mean_cross_entropy(logits: &[f32], labels: &[usize], classes: usize) -> f64 {
    let mut total = 0f64;
    for (row, &label) in logits.chunks_exact(classes).zip(labels) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let log_sum = row.iter().map(|&v| ((v as f64) - max).exp()).sum::<f64>().ln() + max;
        total += log_sum - row[label] as f64;
    }
    total / labels.len().max(1) as f64
}

/// Progress with rate and ETA: a bar on a terminal; elsewhere (logs, `nohup`, CI) a plain
/// line at most every 30 s, so long runs still show where they are.
pub struct Progress {
    bar: ProgressBar,
    plain: Option<std::sync::Mutex<PlainProgress>>,
}

struct PlainProgress {
    what: String,
    len: u64,
    pos: u64,
    start: Instant,
    last: Instant,
}

impl Progress {
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
        if let Some(plain) = &self.plain {
            let mut p = plain.lock().unwrap_or_else(|e| e.into_inner());
            p.pos += n;
            if p.last.elapsed().as_secs() >= 30 && p.pos < p.len {
                p.last = Instant::now();
                let elapsed = p.start.elapsed().as_secs_f64();
                let rate = p.pos as f64 / elapsed.max(1e-9);
                let eta = (p.len - p.pos) as f64 / rate.max(1e-9);
                eprintln!("{}: {}/{} ({:.1}/s, {:.0} s elapsed, ETA {:.0} s)", p.what, p.pos, p.len, rate, elapsed, eta);
            }
        }
    }

    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    pub fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
    }
}

pub fn progress_bar(len: u64, what: &str) -> Progress {
    use std::io::IsTerminal;
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    let plain = (!std::io::stderr().is_terminal()).then(|| {
        std::sync::Mutex::new(PlainProgress { what: what.to_string(), len, pos: 0, start: Instant::now(), last: Instant::now() })
    });
    Progress { bar, plain }
}

/// One-hot targets `[rows, classes]` for `cross_entropy_with_logits_loss`.
pub fn one_hot(dev: &Cpu, labels: &[usize], classes: usize) -> Tensor<(usize, usize), f32, Cpu> {
    let mut v = vec![0f32; labels.len() * classes];
    for (row, &l) in labels.iter().enumerate() {
        v[row * classes + l] = 1.0;
    }
    dev.tensor_from_vec(v, (labels.len(), classes))
}
