//! The `teacher` stage: fine-tune a pretrained BERT on the task (the paper's "Teacher" row),
//! and [`teacher_logits`], the teacher inference that distillation calls.
//!
//! Recipe as in the BERT paper and HF's `run_glue.py`: AdamW (no decay on biases and
//! LayerNorm), linear warm-up then linear decay to 0, global gradient clipping. Batches are
//! bucketed by length so that little compute goes to padding.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::{load_splits, mean_cross_entropy, one_hot, progress_bar, Evaluation, RunContext};
use crate::config::{expand_path, DataConfig, DeviceName, Experiment, TaskName, TeacherConfig};
use crate::data::{Dataset, Task};
use crate::metrics::{argmax_rows, Metrics};
use crate::models::bert::{BertForSequenceClassification, BertInput};
use crate::models::bert_inference::BertInference;
use crate::models::packed::{missing_instruction_note, Precision};
use crate::optim::{clip_grad_norm, Optimizer};
use crate::report::{write_atomic, MetricsLog, ResultRow};
use sha2::{Digest, Sha256};
use crate::tokenize::BertTokenizer;

/// Batches per sorting pool: large enough that batches are nearly uniform in length,
/// small enough that batch composition stays random.
const BUCKET_POOL: usize = 50;

/// A split as teacher input: `(ids, token types)` per example, with gold labels.
pub struct TeacherSet {
    pub rows: Vec<(Vec<u32>, Vec<u32>)>,
    pub labels: Vec<usize>,
}

impl TeacherSet {
    pub fn new(ds: &Dataset, tokenizer: &BertTokenizer) -> Result<TeacherSet> {
        let texts: Vec<(&str, Option<&str>)> =
            ds.examples.iter().map(|e| (e.text_a.as_str(), e.text_b.as_deref())).collect();
        let rows = tokenizer.encode_all(&texts).with_context(|| format!("{}", ds.path.display()))?;
        Ok(TeacherSet { rows, labels: ds.examples.iter().map(|e| e.label).collect() })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn input(&self, indices: &[usize], pad_id: u32) -> BertInput {
        let rows: Vec<(Vec<u32>, Vec<u32>)> = indices.iter().map(|&i| self.rows[i].clone()).collect();
        BertInput::new(&rows, pad_id)
    }
}

/// One epoch of length-bucketed batches: shuffle, sort pools of `BUCKET_POOL` batches by
/// length, cut them into batches, shuffle the batches.
pub fn bucketed_batches(lengths: &[usize], batch_size: usize, rng: &mut StdRng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(rng);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for pool in order.chunks_mut(batch_size * BUCKET_POOL) {
        pool.sort_by_key(|&i| lengths[i]);
        batches.extend(pool.chunks(batch_size).map(|c| c.to_vec()));
    }
    batches.shuffle(rng);
    batches
}

/// Logits `[rows, num_labels]` (row-major, in input order) of pre-encoded rows, in
/// length-sorted batches, with a progress bar labelled `what`.
pub fn logits_of_rows(teacher: &BertInference, rows: &[(Vec<u32>, Vec<u32>)], pad_id: u32, batch_size: usize, what: &str) -> Vec<f32> {
    logits_of_rows_with(rows, teacher.num_labels(), pad_id, batch_size, what, |input| Ok(teacher.logits(input)))
        .expect("CPU inference cannot fail")
}

/// [`logits_of_rows`] with any predictor (the CPU teacher, or the GPU one).
pub fn logits_of_rows_with(
    rows: &[(Vec<u32>, Vec<u32>)],
    classes: usize,
    pad_id: u32,
    batch_size: usize,
    what: &str,
    mut predict: impl FnMut(&BertInput) -> Result<Vec<f32>>,
) -> Result<Vec<f32>> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i].0.len());
    let mut logits = vec![0f32; rows.len() * classes];
    let bar = progress_bar(rows.len() as u64, what);
    for chunk in order.chunks(batch_size) {
        let batch: Vec<(Vec<u32>, Vec<u32>)> = chunk.iter().map(|&i| rows[i].clone()).collect();
        let out = predict(&BertInput::new(&batch, pad_id))?;
        for (r, &i) in chunk.iter().enumerate() {
            logits[i * classes..(i + 1) * classes].copy_from_slice(&out[r * classes..(r + 1) * classes]);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(logits)
}

/// Teacher logits for texts (or pairs), batched, with a progress bar and ETA.
pub fn teacher_logits(
    teacher: &BertInference,
    tokenizer: &BertTokenizer,
    texts: &[(&str, Option<&str>)],
    batch_size: usize,
) -> Result<Vec<f32>> {
    let rows = tokenizer.encode_all(texts)?;
    TEACHER_INFERENCE_ROWS.fetch_add(rows.len(), Ordering::Relaxed);
    Ok(logits_of_rows(teacher, &rows, tokenizer.pad_id, batch_size, "teacher inference"))
}

/// Dev metrics, loss and inference speed of the teacher on `set`.
pub fn evaluate_teacher(teacher: &BertInference, set: &TeacherSet, pad_id: u32, batch_size: usize) -> Evaluation {
    let classes = teacher.num_labels();
    let start = Instant::now();
    let logits = logits_of_rows(teacher, &set.rows, pad_id, batch_size, "teacher eval");
    let elapsed = start.elapsed().as_secs_f64();
    Evaluation {
        metrics: Metrics::compute(&argmax_rows(&logits, classes), &set.labels, classes),
        loss: mean_cross_entropy(&logits, &set.labels, classes),
        sentences_per_s: set.len() as f64 / elapsed.max(1e-9),
    }
}

/// Linear warm-up from 0 to `peak` over `warmup` steps, then linear decay to 0 at `total`.
/// `step` counts from 1 (the first update already gets a non-zero rate).
pub fn warmup_linear_lr(peak: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step <= warmup {
        peak * step as f64 / warmup.max(1) as f64
    } else {
        peak * (total.saturating_sub(step)) as f64 / (total - warmup).max(1) as f64
    }
}

/// Loads the teacher an experiment names, with a classifier for the task's labels.
pub fn load_teacher(cfg: &TeacherConfig, task: &Task, dev: &Cpu, rng: &mut StdRng) -> Result<(BertForSequenceClassification, BertTokenizer)> {
    let dir = expand_path(&cfg.model);
    if !dir.is_dir() {
        bail!(
            "{}: no such model dir (teacher.model); run scripts/setup for the default all-MiniLM-L6-v2 \
             (the Chinese e5 teacher then needs `distill import-e5` and `distill trim-vocab`, see the README), \
             or point teacher.model at an HF BERT dir",
            dir.display()
        );
    }
    let tokenizer = BertTokenizer::load(&dir, cfg.max_seq_len)?;
    let model = BertForSequenceClassification::load(&dir, task.num_labels(), dev, rng)?;
    if model.bert.config.max_position_embeddings < cfg.max_seq_len {
        bail!(
            "teacher.max_seq_len = {} exceeds the model's max_position_embeddings ({}); lower it",
            cfg.max_seq_len,
            model.bert.config.max_position_embeddings
        );
    }
    Ok((model, tokenizer))
}

pub fn train_teacher(ctx: &RunContext) -> Result<ResultRow> {
    let exp = &ctx.experiment;
    let cfg = exp.teacher.as_ref().context("the teacher stage needs a [teacher] table")?;
    let teacher_dir = teacher_dir(exp);
    if let Some(row) = finished_teacher(&teacher_dir)? {
        eprintln!(
            "teacher: reusing {} (dev accuracy {:.4}; same task, data, seed and [teacher] settings)",
            teacher_dir.display(),
            row.dev_accuracy
        );
        return Ok(ResultRow {
            experiment: exp.name.clone(),
            config_hash: ctx.config_hash.clone(),
            run_dir: ctx.run_dir.display().to_string(),
            ..row
        });
    }
    let task = Task::new(exp.task, exp.data.columns.as_ref());
    let (train, dev) = load_splits(exp, &task)?;
    eprintln!("data: {} train, {} dev examples ({:?})", train.examples.len(), dev.examples.len(), task.name);

    let dev_cpu = Cpu::seed_from_u64(exp.seed);
    let mut rng = StdRng::seed_from_u64(exp.seed);
    let (mut model, tokenizer) = load_teacher(cfg, &task, &dev_cpu, &mut rng)?;
    let train_set = TeacherSet::new(&train, &tokenizer)?;
    let dev_set = TeacherSet::new(&dev, &tokenizer)?;
    let num_params = model.num_params();
    let mean_len = train_set.rows.iter().map(|r| r.0.len()).sum::<usize>() as f64 / train_set.len().max(1) as f64;
    eprintln!(
        "teacher: {} ({} layers, hidden {}), {num_params} parameters; mean train length {mean_len:.1} tokens",
        expand_path(&cfg.model).display(),
        model.bert.config.num_hidden_layers,
        model.bert.config.hidden_size
    );

    let mut log = MetricsLog::open(ctx.run_dir.join("metrics.csv"), "teacher")?;
    let mut optimizer = Optimizer::adamw(cfg.lr, cfg.weight_decay);
    let names: Vec<String> = model.params_mut().into_iter().map(|(n, _)| n).collect();
    optimizer.exclude_from_decay(names.iter().map(|n| n.ends_with(".bias") || n.contains("LayerNorm")).collect());
    let trainable = vec![true; names.len()];

    let lengths: Vec<usize> = train_set.rows.iter().map(|r| r.0.len()).collect();
    let steps_per_epoch = train_set.len().div_ceil(cfg.batch_size);
    let total_steps = steps_per_epoch * cfg.epochs;
    let warmup = (cfg.warmup_ratio * total_steps as f64).ceil() as usize;
    let bar = progress_bar(total_steps as u64, "teacher");
    let start = Instant::now();
    let mut train_time = 0f64;
    let mut seen = 0usize;
    let mut best: Option<(usize, Metrics)> = None;
    let mut step = 0usize;
    for epoch in 1..=cfg.epochs {
        let epoch_start = Instant::now();
        let mut epoch_loss = 0f64;
        let mut epoch_batches = 0usize;
        for batch in bucketed_batches(&lengths, cfg.batch_size, &mut rng) {
            let t0 = Instant::now();
            step += 1;
            optimizer.set_lr(warmup_linear_lr(cfg.lr, step, warmup, total_steps));
            let input = train_set.input(&batch, tokenizer.pad_id);
            let labels: Vec<usize> = batch.iter().map(|&i| train_set.labels[i]).collect();
            let loss = cross_entropy_with_logits_loss(model.forward_train(&input), one_hot(&dev_cpu, &labels, task.num_labels()));
            let loss_value = loss.array() as f64;
            if !loss_value.is_finite() {
                bail!("the teacher's training loss became {loss_value} at step {step}; lower teacher.lr");
            }
            let mut grads = loss.backward();
            let mut params = model.params_mut();
            clip_grad_norm(&params, &mut grads, cfg.max_grad_norm as f32);
            optimizer.step(&mut params, &trainable, &[], &mut grads);
            drop(params);
            train_time += t0.elapsed().as_secs_f64();
            seen += batch.len();
            epoch_loss += loss_value;
            epoch_batches += 1;
            bar.inc(1);
            let end_of_epoch = epoch_batches == steps_per_epoch;
            if end_of_epoch || (cfg.eval_every > 0 && step.is_multiple_of(cfg.eval_every)) {
                let train_loss = epoch_loss / epoch_batches as f64;
                let eval = bar.suspend(|| {
                    evaluate_teacher(&BertInference::new(&model, Precision::F32), &dev_set, tokenizer.pad_id, cfg.eval_batch_size)
                });
                let elapsed = start.elapsed().as_secs_f64();
                log.push_evaluation("teacher", step, epoch, train_loss, eval.loss, eval.metrics, elapsed)?;
                let improved = best.as_ref().is_none_or(|(_, m)| eval.metrics.accuracy > m.accuracy);
                let line = format!(
                    "teacher epoch {epoch} step {step}/{total_steps}: train loss {train_loss:.4}, dev loss {:.4}, dev acc {:.4}, F1 {:.4}{}{}",
                    eval.loss,
                    eval.metrics.accuracy,
                    eval.metrics.f1,
                    if improved { " (best)" } else { "" },
                    if end_of_epoch { format!("; epoch took {:.0} s", epoch_start.elapsed().as_secs_f64()) } else { String::new() }
                );
                bar.suspend(|| eprintln!("{line}"));
                if improved {
                    model.save(&teacher_dir, &task.labels)?;
                    best = Some((epoch, eval.metrics));
                }
            }
        }
    }
    bar.finish_and_clear();
    let (best_epoch, dev_metrics) = best.expect("at least one evaluation ran");
    // Reload the kept dir: checks that it round-trips and times inference on an idle model.
    let (saved, saved_tokenizer) = reload_saved(&teacher_dir, cfg, &task, &dev_cpu)?;
    let check = evaluate_teacher(&BertInference::new(&saved, Precision::F32), &dev_set, saved_tokenizer.pad_id, cfg.eval_batch_size);
    if (check.metrics.accuracy - dev_metrics.accuracy).abs() > 1e-9 {
        bail!(
            "{}: the saved teacher scores dev accuracy {:.4}, not the {:.4} it had when saved",
            teacher_dir.display(),
            check.metrics.accuracy,
            dev_metrics.accuracy
        );
    }
    eprintln!("teacher saved to {} (an HF model dir)", teacher_dir.display());
    let row = ctx.result_row("teacher", num_params, best_epoch, dev_metrics, train_time, seen, check.sentences_per_s);
    write_atomic(&teacher_dir.join(RESULT_FILE), serde_json::to_string_pretty(&row)?.as_bytes())?;
    Ok(row)
}

/// Written into a teacher dir when its training finished; its presence means "reuse me".
const RESULT_FILE: &str = "distill_result.json";

/// Where an experiment's teacher lives: `OUT_DIR/teachers/TASK-HASH`, the hash taken over
/// everything that shapes the teacher (task, data, seed, `[teacher]`), so experiments that
/// differ only in student or distillation settings share one fine-tuned teacher.
pub fn teacher_dir(exp: &Experiment) -> PathBuf {
    #[derive(serde::Serialize)]
    struct TeacherIdentity<'a> {
        task: TaskName,
        seed: u64,
        data: &'a DataConfig,
        teacher: &'a Option<TeacherConfig>,
    }
    let identity = TeacherIdentity { task: exp.task, seed: exp.seed, data: &exp.data, teacher: &exp.teacher };
    let text = toml::to_string(&identity).expect("serialisable");
    let hash: String = Sha256::digest(text.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect();
    expand_path(&exp.out_dir).join("teachers").join(format!("{}-{hash}", format!("{:?}", exp.task).to_lowercase()))
}

/// The result row of a finished teacher dir, if training finished there.
pub fn finished_teacher(dir: &Path) -> Result<Option<ResultRow>> {
    let path = dir.join(RESULT_FILE);
    if !path.is_file() || !dir.join("model.safetensors").is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("{}: not a distill result file; delete it to retrain", path.display()))?))
}

/// Rows run through [`teacher_logits`] in this process (tests check that a cache hit costs none).
pub static TEACHER_INFERENCE_ROWS: AtomicUsize = AtomicUsize::new(0);

/// The transfer set's teacher logits, and the speed of the pass that made them.
pub struct TransferLogits {
    /// `[rows, num_labels]`, row-major.
    pub logits: Vec<f32>,
    /// Rows per second of the teacher pass (as measured when the cache file was written).
    pub rows_per_s: Option<f64>,
}

/// Teacher logits for texts (or pairs), computed once per (teacher weights, max length,
/// precision, texts) and cached in `cache_dir` as safetensors; later calls with the same
/// inputs read the file. FP32 keys are those of earlier versions (the precision is hashed
/// only when it is not f32), so existing caches stay valid.
#[allow(clippy::too_many_arguments)]
pub fn cached_teacher_logits(
    teacher_dir: &Path,
    max_seq_len: usize,
    texts: &[(String, Option<String>)],
    batch_size: usize,
    num_labels: usize,
    cache_dir: &Path,
    device: DeviceName,
    precision: Precision,
) -> Result<TransferLogits> {
    let mut hasher = Sha256::new();
    for file in ["model.safetensors", "config.json"] {
        let path = teacher_dir.join(file);
        let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read the teacher (distill.teacher)", path.display()))?;
        hasher.update(Sha256::digest(&bytes));
    }
    hasher.update(max_seq_len.to_le_bytes());
    if !precision.is_f32() {
        hasher.update(format!("precision={}", precision.name()).as_bytes());
    }
    for (a, b) in texts {
        hasher.update(a.as_bytes());
        hasher.update([0u8]);
        if let Some(b) = b {
            hasher.update(b.as_bytes());
        }
        hasher.update([1u8]);
    }
    let key: String = hasher.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect();
    let path = cache_dir.join(format!("teacher-logits-{key}.safetensors"));
    if path.is_file() {
        let bytes = std::fs::read(&path)?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).with_context(|| format!("{}: corrupt cache file; delete it", path.display()))?;
        let rows_per_s = header.metadata().as_ref().and_then(|m| m.get("rows_per_s")).and_then(|v| v.parse().ok());
        let tensors = safetensors::SafeTensors::deserialize(&bytes).with_context(|| format!("{}: corrupt cache file; delete it", path.display()))?;
        let view = tensors.tensor("logits").with_context(|| format!("{}: corrupt cache file; delete it", path.display()))?;
        if view.shape() == [texts.len(), num_labels] {
            eprintln!("teacher logits: reusing {} ({} rows, {})", path.display(), texts.len(), precision.name());
            let logits = view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
            return Ok(TransferLogits { logits, rows_per_s });
        }
    }
    let dev = Cpu::default();
    let model = BertForSequenceClassification::load(teacher_dir, num_labels, &dev, &mut StdRng::seed_from_u64(0))?;
    let tokenizer = BertTokenizer::load(teacher_dir, max_seq_len)?;
    let refs: Vec<(&str, Option<&str>)> = texts.iter().map(|(a, b)| (a.as_str(), b.as_deref())).collect();
    let t0 = Instant::now();
    let logits = match device {
        DeviceName::Cpu => {
            if let Some(note) = missing_instruction_note(precision) {
                eprintln!("{note}");
            }
            teacher_logits(&BertInference::new(&model, precision), &tokenizer, &refs, batch_size)?
        }
        DeviceName::Cuda => {
            if !precision.is_f32() {
                eprintln!("note: distill.teacher_precision = {:?} applies to the CPU; the GPU computes in f32", precision.name());
            }
            let gpu = crate::gpu::bert::GpuBert::new(crate::gpu::Gpu::new()?, &model)?;
            eprintln!("teacher logits: on the GPU ({})", gpu.gpu().name());
            let rows = tokenizer.encode_all(&refs)?;
            TEACHER_INFERENCE_ROWS.fetch_add(rows.len(), Ordering::Relaxed);
            logits_of_rows_with(&rows, num_labels, tokenizer.pad_id, batch_size, "teacher inference (GPU)", |input| gpu.predict_logits(input))?
        }
    };
    let seconds = t0.elapsed().as_secs_f64();
    let rows_per_s = texts.len() as f64 / seconds.max(1e-9);
    eprintln!(
        "teacher logits: {} rows in {seconds:.0} s ({rows_per_s:.0} rows/s, {}); cached in {}",
        texts.len(),
        precision.name(),
        path.display()
    );
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![texts.len(), num_labels], &bytes)?;
    let metadata = std::collections::HashMap::from([
        ("teacher".to_string(), teacher_dir.display().to_string()),
        ("precision".to_string(), precision.name().to_string()),
        ("rows_per_s".to_string(), format!("{rows_per_s:.1}")),
    ]);
    write_atomic(&path, &safetensors::serialize([("logits", view)], Some(metadata))?)?;
    Ok(TransferLogits { logits, rows_per_s: Some(rows_per_s) })
}

fn reload_saved(dir: &Path, cfg: &TeacherConfig, task: &Task, dev: &Cpu) -> Result<(BertForSequenceClassification, BertTokenizer)> {
    let tokenizer = BertTokenizer::load(dir, cfg.max_seq_len)?;
    let model = BertForSequenceClassification::load(dir, task.num_labels(), dev, &mut StdRng::seed_from_u64(0))?;
    Ok((model, tokenizer))
}
