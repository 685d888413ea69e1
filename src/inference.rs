//! Inference over whole sets, on any backend: the teacher's logits (with the transfer set's
//! cache) and the dev-set evaluation of teacher and student.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use sha2::{Digest, Sha256};

use crate::backend::{StudentBackend, TeacherBackend};
use crate::config::DeviceName;
use crate::encode::{EncodedSet, TeacherSet};
use crate::files::write_atomic;
use crate::models::layers::{f32_bytes, f32_values, serialize_tensors};
use crate::loss::mean_cross_entropy;
use crate::metrics::{argmax_rows, Metrics};
use crate::models::bert::{BertForSequenceClassification, BertInput};
use crate::ops::packed::Precision;
use crate::progress::progress_bar;
use crate::tokenize::BertTokenizer;

/// Dev-set evaluation result.
pub struct Evaluation {
    pub metrics: Metrics,
    pub loss: f64,
    pub sentences_per_s: f64,
}

/// Evaluates the student on `set` in length-sorted batches (similar lengths pack densely).
pub fn evaluate_student(student: &StudentBackend, set: &EncodedSet, empty_id: u32, batch_size: usize) -> Result<Evaluation> {
    let classes = student.model().shape.num_labels;
    let mut order: Vec<usize> = (0..set.len()).collect();
    order.sort_by_key(|&i| set.length(i));
    let mut logits = vec![0f32; set.len() * classes];
    let start = Instant::now();
    for chunk in order.chunks(batch_size) {
        scatter_rows(&mut logits, chunk, &student.predict_logits(&set.input(chunk, empty_id))?, classes);
    }
    Ok(evaluation(&logits, &set.labels, classes, start))
}

/// Dev metrics, loss and inference speed of the teacher on `set`.
pub fn evaluate_teacher(teacher: &TeacherBackend, set: &TeacherSet, pad_id: u32, batch_size: usize) -> Result<Evaluation> {
    let start = Instant::now();
    let logits = logits_of_rows(teacher, &set.rows, pad_id, batch_size, "teacher eval")?;
    Ok(evaluation(&logits, &set.labels, teacher.num_labels(), start))
}

fn evaluation(logits: &[f32], labels: &[usize], classes: usize, start: Instant) -> Evaluation {
    let elapsed = start.elapsed().as_secs_f64();
    Evaluation {
        metrics: Metrics::compute(&argmax_rows(logits, classes), labels, classes),
        loss: mean_cross_entropy(logits, labels, classes),
        sentences_per_s: labels.len() as f64 / elapsed.max(1e-9),
    }
}

/// Logits `[rows, num_labels]` (row-major, in input order) of pre-encoded rows, in
/// length-sorted batches, with a progress bar labelled `what`.
pub fn logits_of_rows(teacher: &TeacherBackend, rows: &[(Vec<u32>, Vec<u32>)], pad_id: u32, batch_size: usize, what: &str) -> Result<Vec<f32>> {
    let classes = teacher.num_labels();
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i].0.len());
    let mut logits = vec![0f32; rows.len() * classes];
    let bar = progress_bar(rows.len() as u64, what);
    scatter_rows(&mut logits, &order, &predict_in_order(teacher, rows, &order, pad_id, batch_size, &bar)?, classes);
    bar.finish_and_clear();
    Ok(logits)
}

/// Teacher logits of `rows[indices]`, in that order, in consecutive batches of `batch_size`.
fn predict_in_order(
    teacher: &TeacherBackend,
    rows: &[(Vec<u32>, Vec<u32>)],
    indices: &[usize],
    pad_id: u32,
    batch_size: usize,
    bar: &crate::progress::Progress,
) -> Result<Vec<f32>> {
    let mut values = Vec::with_capacity(indices.len() * teacher.num_labels());
    for chunk in indices.chunks(batch_size) {
        let batch: Vec<(Vec<u32>, Vec<u32>)> = chunk.iter().map(|&i| rows[i].clone()).collect();
        values.extend(teacher.predict_logits(&BertInput::new(&batch, pad_id))?);
        bar.inc(chunk.len() as u64);
    }
    Ok(values)
}

/// Puts `values` (rows of `classes`, in the order of `indices`) at those rows of `logits`.
fn scatter_rows(logits: &mut [f32], indices: &[usize], values: &[f32], classes: usize) {
    for (r, &i) in indices.iter().enumerate() {
        logits[i * classes..(i + 1) * classes].copy_from_slice(&values[r * classes..(r + 1) * classes]);
    }
}

/// Teacher logits for texts (or pairs), batched, with a progress bar and ETA.
pub fn teacher_logits(teacher: &TeacherBackend, tokenizer: &BertTokenizer, texts: &[(&str, Option<&str>)], batch_size: usize) -> Result<Vec<f32>> {
    let rows = tokenizer.encode_all(texts)?;
    TEACHER_INFERENCE_ROWS.fetch_add(rows.len(), Ordering::Relaxed);
    logits_of_rows(teacher, &rows, tokenizer.pad_id, batch_size, "teacher inference")
}

/// Non-finite teacher logits mean a broken teacher, not a training problem: say so, with
/// the first such row.
fn check_finite(logits: &[f32], classes: usize, texts: &[(String, Option<String>)], teacher_dir: &Path) -> Result<()> {
    if let Some(row) = logits.chunks_exact(classes).position(|r| r.iter().any(|v| !v.is_finite())) {
        anyhow::bail!(
            "{}: the teacher gives non-finite logits ({:?}) for transfer row {} ({:?}); its weights hold NaN or infinity — retrain it or point distill.teacher elsewhere",
            teacher_dir.display(),
            &logits[row * classes..(row + 1) * classes],
            row + 1,
            texts[row].0.chars().take(60).collect::<String>()
        );
    }
    Ok(())
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

/// The logits cache's key: a hash of the teacher's weights and config, the max length, the
/// precision (when not f32) and the texts.
pub fn logits_cache_key(teacher_dir: &Path, max_seq_len: usize, texts: &[(String, Option<String>)], precision: Precision) -> Result<String> {
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
    Ok(hasher.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect())
}

pub fn logits_cache_path(cache_dir: &Path, key: &str) -> std::path::PathBuf {
    cache_dir.join(format!("teacher-logits-{key}.safetensors"))
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
    let key = logits_cache_key(teacher_dir, max_seq_len, texts, precision)?;
    let path = logits_cache_path(cache_dir, &key);
    if path.is_file() {
        let bytes = std::fs::read(&path)?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).with_context(|| format!("{}: corrupt cache file; delete it", path.display()))?;
        let rows_per_s = header.metadata().as_ref().and_then(|m| m.get("rows_per_s")).and_then(|v| v.parse().ok());
        let tensors = safetensors::SafeTensors::deserialize(&bytes).with_context(|| format!("{}: corrupt cache file; delete it", path.display()))?;
        let view = tensors.tensor("logits").with_context(|| format!("{}: corrupt cache file; delete it", path.display()))?;
        if view.shape() == [texts.len(), num_labels] {
            eprintln!("teacher logits: reusing {} ({} rows, {})", path.display(), texts.len(), precision.name());
            let logits = f32_values(view.data());
            check_finite(&logits, num_labels, texts, teacher_dir).with_context(|| format!("{}: delete this cache file", path.display()))?;
            return Ok(TransferLogits { logits, rows_per_s });
        }
    }
    let dev = dfdx::prelude::Cpu::default();
    let model = BertForSequenceClassification::load(teacher_dir, num_labels, &dev, &mut StdRng::seed_from_u64(0))?;
    let tokenizer = BertTokenizer::load(teacher_dir, max_seq_len)?;
    let teacher = TeacherBackend::new(&model, device, precision)?;
    let refs: Vec<(&str, Option<&str>)> = texts.iter().map(|(a, b)| (a.as_str(), b.as_deref())).collect();
    let rows = tokenizer.encode_all(&refs)?;
    let partial = cache_dir.join(format!("teacher-logits-{key}.partial"));
    let t0 = Instant::now();
    let pass = resumable_pass(&teacher, &rows, tokenizer.pad_id, batch_size, &partial)?;
    let logits = pass.logits;
    check_finite(&logits, num_labels, texts, teacher_dir)?;
    let seconds = t0.elapsed().as_secs_f64();
    let rows_per_s = pass.computed as f64 / seconds.max(1e-9);
    eprintln!(
        "teacher logits: {} rows in {seconds:.0} s ({rows_per_s:.0} rows/s, {}{}); cached in {}",
        pass.computed,
        precision.name(),
        if pass.computed < texts.len() { format!("; {} rows resumed from {}", texts.len() - pass.computed, partial.display()) } else { String::new() },
        path.display()
    );
    let bytes = f32_bytes(&logits);
    let metadata = std::collections::HashMap::from([
        ("teacher".to_string(), teacher_dir.display().to_string()),
        ("precision".to_string(), precision.name().to_string()),
        ("rows_per_s".to_string(), format!("{rows_per_s:.1}")),
    ]);
    let tensors = [("logits".to_string(), safetensors::Dtype::F32, vec![texts.len(), num_labels], bytes)];
    write_atomic(&path, &serialize_tensors(&tensors, Some(metadata))?)?;
    std::fs::remove_dir_all(&partial).ok();
    Ok(TransferLogits { logits, rows_per_s: Some(rows_per_s) })
}

/// Batches per saved segment of the teacher pass (a few minutes of work on 2 cores).
const SEGMENT_BATCHES: usize = 64;

struct Pass {
    logits: Vec<f32>,
    /// Rows run through the teacher now (the rest came from saved segments).
    computed: usize,
}

/// The teacher pass over `rows` that survives a kill: the length-sorted order is cut into
/// segments of [`SEGMENT_BATCHES`] batches, each segment's logits saved in `partial/` as it
/// finishes, and a rerun reads the saved segments and computes only the rest. The batches are
/// the same as in one uninterrupted pass, so the logits are too. `DISTILL_STOP_AFTER_SEGMENTS=N`
/// stops with an error after N new segments (how the tests interrupt a pass).
fn resumable_pass(teacher: &TeacherBackend, rows: &[(Vec<u32>, Vec<u32>)], pad_id: u32, batch_size: usize, partial: &Path) -> Result<Pass> {
    let classes = teacher.num_labels();
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i].0.len());
    let mut logits = vec![0f32; rows.len() * classes];
    let stop_after: Option<usize> = std::env::var("DISTILL_STOP_AFTER_SEGMENTS").ok().and_then(|v| v.parse().ok());
    let bar = progress_bar(rows.len() as u64, "teacher inference");
    let (mut computed, mut new_segments) = (0, 0);
    for (index, segment) in order.chunks(batch_size * SEGMENT_BATCHES).enumerate() {
        let file = partial.join(format!("{index:06}.f32"));
        let values = match std::fs::read(&file) {
            Ok(bytes) if bytes.len() == segment.len() * classes * 4 => {
                bar.skip(segment.len() as u64);
                f32_values(&bytes)
            }
            _ => {
                if stop_after == Some(new_segments) {
                    anyhow::bail!("DISTILL_STOP_AFTER_SEGMENTS={new_segments}: the teacher pass stops here (a test's interruption)");
                }
                let values = predict_in_order(teacher, rows, segment, pad_id, batch_size, &bar)?;
                TEACHER_INFERENCE_ROWS.fetch_add(segment.len(), Ordering::Relaxed);
                write_atomic(&file, &f32_bytes(&values))?;
                computed += segment.len();
                new_segments += 1;
                values
            }
        };
        scatter_rows(&mut logits, segment, &values, classes);
    }
    bar.finish_and_clear();
    Ok(Pass { logits, computed })
}
