//! Student vectors made from the teacher itself (the Model2Vec method: Tulkens & van Dongen,
//! 2024). Each student vocab entry goes through the teacher's encoder on its own,
//! `[CLS] pieces [SEP]`, and its hidden state after `layer` layers is pooled into one vector
//! (the mean over its pieces, or `[CLS]`); PCA reduces the vectors to `embedding_dim` when
//! that is smaller than the teacher's width; SIF weighting optionally scales each by
//! a/(a + p(word)). An entry that is one of the teacher's own vocab entries (a WordPiece
//! student shares the teacher's vocab) is fed as that id; any other (a jieba word) is
//! tokenized into the teacher's pieces. `[PAD]` gets zeros. Every entry gets a vector.
//!
//! The result is cached under `OUT_DIR/cache/` by a hash of the teacher's weights and
//! tokenizer, the vocab, the settings and (for SIF) the counts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use dfdx::prelude::Cpu;
use sha2::{Digest, Sha256};

use crate::config::{Pooling, Weighting};
use crate::files::{safetensors_intact, write_atomic};
use crate::models::bert::{BertInput, BertModel};
use crate::models::bert_inference::BertInference;
use crate::models::layers::{f32_bytes, f32_values, serialize_tensors};
use crate::ops::packed::Precision;
use crate::tokenize::BertTokenizer;

/// How many times [`teacher_vectors`] found its result cached, process-wide (tests read it).
pub static CACHE_HITS: AtomicUsize = AtomicUsize::new(0);

/// SIF's `a`: words more frequent than about a/1 of the tokens are scaled down most.
const SIF_A: f64 = 1e-3;
/// Entries longer than this many teacher pieces are cut (vocab entries are words).
const MAX_PIECES: usize = 32;
const BATCH: usize = 256;

/// What `[embeddings]` asks of the teacher's vectors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VectorSettings {
    /// Hidden state after this many layers; `None`: all of them.
    pub layer: Option<usize>,
    pub pooling: Pooling,
    pub weighting: Weighting,
    /// The student's `embedding_dim`.
    pub dim: usize,
}

/// One vector per vocab entry, `[entries, dim]` row-major.
pub struct TeacherVectors {
    pub values: Vec<f32>,
    /// Share of the variance the kept PCA components explain (1 without PCA).
    pub explained: f64,
    pub cache_file: Option<PathBuf>,
    pub cached: bool,
}

/// Vectors for `tokens` from the teacher in `teacher_dir` (an HF BERT dir); `pad` gets zeros.
/// `counts[i]` is how often entry `i` occurs in the training set (for SIF). With a
/// `cache_dir`, a result made before from the same inputs is read back instead.
pub fn teacher_vectors(
    teacher_dir: &Path,
    tokens: &[String],
    pad: usize,
    counts: &[u64],
    settings: VectorSettings,
    cache_dir: Option<&Path>,
) -> Result<TeacherVectors> {
    let cache_file = cache_dir.map(|dir| dir.join(format!("teacher-vectors-{}.safetensors", cache_key(teacher_dir, tokens, counts, settings))));
    if let Some(file) = &cache_file {
        if let Some((values, explained)) = read_cached(file, tokens.len(), settings.dim) {
            CACHE_HITS.fetch_add(1, Ordering::Relaxed);
            return Ok(TeacherVectors { values, explained, cache_file, cached: true });
        }
    }
    let (pooled, hidden) = pooled_hidden_states(teacher_dir, tokens, pad, settings)?;
    let keep: Vec<usize> = (0..tokens.len()).filter(|&i| i != pad).collect();
    let (mut values, explained) = if settings.dim < hidden {
        pca(&pooled, hidden, &keep, settings.dim)
    } else {
        (pooled, 1.0)
    };
    if settings.weighting == Weighting::Sif {
        sif_weight(&mut values, settings.dim, counts);
    }
    values[pad * settings.dim..(pad + 1) * settings.dim].fill(0.0);
    if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
        bail!("{}: the teacher gave a non-finite vector for vocab entry {:?}", teacher_dir.display(), tokens[bad / settings.dim]);
    }
    if let Some(file) = &cache_file {
        let bytes = f32_bytes(&values);
        let metadata = HashMap::from([
            ("teacher".to_string(), teacher_dir.display().to_string()),
            ("explained".to_string(), explained.to_string()),
        ]);
        let tensors = [("vectors".to_string(), safetensors::Dtype::F32, vec![tokens.len(), settings.dim], bytes)];
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the cache dir", dir.display()))?;
        }
        write_atomic(file, &serialize_tensors(&tensors, Some(metadata))?)?;
    }
    Ok(TeacherVectors { values, explained, cache_file, cached: false })
}

/// The teacher's ids for each entry, `[CLS] pieces [SEP]` (empty for `pad`).
pub fn entry_ids(tokenizer: &BertTokenizer, tokens: &[String], pad: usize) -> Result<Vec<Vec<u32>>> {
    let (frame, _) = tokenizer.encode("", None)?;
    if frame.len() != 2 {
        bail!("the teacher's tokenizer frames a text with {} special tokens, not 2 ([CLS] … [SEP])", frame.len());
    }
    tokens
        .iter()
        .enumerate()
        .map(|(i, token)| {
            if i == pad {
                return Ok(Vec::new());
            }
            let pieces = match tokenizer.token_id(token) {
                Some(id) => vec![id],
                None => {
                    let (ids, _) = tokenizer.encode(token, None)?;
                    ids[1..ids.len() - 1].to_vec()
                }
            };
            let mut ids = vec![frame[0]];
            ids.extend(pieces.into_iter().take(MAX_PIECES));
            ids.push(frame[1]);
            Ok(ids)
        })
        .collect()
}

/// Pooled hidden states `[entries, hidden]` (zeros for `pad`) and `hidden`, the teacher's width.
fn pooled_hidden_states(teacher_dir: &Path, tokens: &[String], pad: usize, settings: VectorSettings) -> Result<(Vec<f32>, usize)> {
    let t0 = Instant::now();
    let tokenizer = BertTokenizer::load(teacher_dir, MAX_PIECES + 2)?;
    let bert = BertModel::load(teacher_dir, &Cpu::default())?;
    let encoder = BertInference::encoder(&bert, Precision::F32);
    let layers = settings.layer.unwrap_or(encoder.num_layers());
    if layers > encoder.num_layers() {
        bail!("embeddings.layer = {layers} but the teacher ({}) has {} layers; use 0 to {}", teacher_dir.display(), encoder.num_layers(), encoder.num_layers());
    }
    let hidden = bert.config.hidden_size;
    if settings.dim > hidden {
        bail!(
            "student.embedding_dim = {} but the teacher ({}) is {hidden} wide; teacher-made vectors can be at most that (lower student.embedding_dim)",
            settings.dim,
            teacher_dir.display()
        );
    }
    let ids = entry_ids(&tokenizer, tokens, pad)?;
    // Similar lengths batch together, so little padding is computed.
    let mut order: Vec<usize> = (0..tokens.len()).filter(|&i| i != pad).collect();
    order.sort_by_key(|&i| ids[i].len());
    let mut pooled = vec![0f32; tokens.len() * hidden];
    for batch in order.chunks(BATCH) {
        let rows: Vec<(Vec<u32>, Vec<u32>)> = batch.iter().map(|&i| (ids[i].clone(), vec![0; ids[i].len()])).collect();
        let input = BertInput::new(&rows, tokenizer.pad_id);
        let (encoded, lengths) = encoder.encode_layers(&input, layers);
        let mut offset = 0;
        for (&entry, len) in batch.iter().zip(lengths) {
            let states = &encoded[offset * hidden..(offset + len) * hidden];
            offset += len;
            let out = &mut pooled[entry * hidden..(entry + 1) * hidden];
            pool(states, hidden, settings.pooling, out);
        }
    }
    eprintln!(
        "embeddings: {} vocab entries through the teacher ({} of {} layers, {:?} pooling) in {:.1} s",
        order.len(),
        layers,
        encoder.num_layers(),
        settings.pooling,
        t0.elapsed().as_secs_f64()
    );
    Ok((pooled, hidden))
}

/// One entry's vector from its hidden states `[CLS] pieces [SEP]`, `[len, hidden]`.
fn pool(states: &[f32], hidden: usize, pooling: Pooling, out: &mut [f32]) {
    let len = states.len() / hidden;
    match pooling {
        Pooling::Cls => out.copy_from_slice(&states[..hidden]),
        Pooling::Mean => {
            // The entry's own pieces; an entry with none (it tokenizes to nothing) keeps [CLS].
            let pieces = if len > 2 { &states[hidden..(len - 1) * hidden] } else { &states[..hidden] };
            let n = (pieces.len() / hidden) as f32;
            for row in pieces.chunks_exact(hidden) {
                out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
            }
            out.iter_mut().for_each(|o| *o /= n);
        }
    }
}

/// Rows `keep` of `x` `[n, width]` centred and projected on their `k` leading principal
/// directions; other rows are zero. Returns `[n, k]` and the share of variance kept.
pub fn pca(x: &[f32], width: usize, keep: &[usize], k: usize) -> (Vec<f32>, f64) {
    let m = keep.len().max(1) as f64;
    let mut mean = vec![0f64; width];
    for &i in keep {
        mean.iter_mut().zip(&x[i * width..(i + 1) * width]).for_each(|(s, &v)| *s += v as f64);
    }
    mean.iter_mut().for_each(|s| *s /= m);
    let mut covariance = vec![0f64; width * width];
    let mut centred = vec![0f64; width];
    for &i in keep {
        centred.iter_mut().zip(&x[i * width..(i + 1) * width]).zip(&mean).for_each(|((c, &v), mu)| *c = v as f64 - mu);
        for (r, &cr) in centred.iter().enumerate() {
            let row = &mut covariance[r * width..(r + 1) * width];
            row.iter_mut().zip(&centred).for_each(|(s, &cc)| *s += cr * cc);
        }
    }
    covariance.iter_mut().for_each(|s| *s /= m);
    let (eigenvalues, eigenvectors) = symmetric_eigen(&covariance, width);
    let mut order: Vec<usize> = (0..width).collect();
    order.sort_by(|&a, &b| eigenvalues[b].total_cmp(&eigenvalues[a]));
    let total: f64 = eigenvalues.iter().map(|v| v.max(0.0)).sum();
    let explained = order[..k].iter().map(|&j| eigenvalues[j].max(0.0)).sum::<f64>() / total.max(f64::MIN_POSITIVE);
    // Each direction's sign fixed (largest component positive), so results do not flip.
    let directions: Vec<Vec<f64>> = order[..k]
        .iter()
        .map(|&j| {
            let v: Vec<f64> = (0..width).map(|r| eigenvectors[r * width + j]).collect();
            let largest = v.iter().copied().fold(0f64, |a, b| if b.abs() > a.abs() { b } else { a });
            if largest < 0.0 {
                v.iter().map(|c| -c).collect()
            } else {
                v
            }
        })
        .collect();
    let mut out = vec![0f32; (x.len() / width) * k];
    for &i in keep {
        centred.iter_mut().zip(&x[i * width..(i + 1) * width]).zip(&mean).for_each(|((c, &v), mu)| *c = v as f64 - mu);
        for (j, d) in directions.iter().enumerate() {
            out[i * k + j] = centred.iter().zip(d).map(|(a, b)| a * b).sum::<f64>() as f32;
        }
    }
    (out, explained)
}

/// Eigenvalues and eigenvectors (columns of a row-major `[n, n]`) of a symmetric matrix by
/// cyclic Jacobi rotations: a few hundred wide at most here, where this converges in about
/// ten sweeps, and it needs no linear-algebra dependency.
pub fn symmetric_eigen(matrix: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = matrix.to_vec();
    let mut v = vec![0f64; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..n).flat_map(|p| (0..n).filter(move |&q| q != p).map(move |q| (p, q))).map(|(p, q)| a[p * n + q].powi(2)).sum();
        if off.sqrt() <= 1e-14 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// Scales row `i` by a/(a + p_i), p_i = counts[i] / total (unseen entries keep their length).
fn sif_weight(values: &mut [f32], dim: usize, counts: &[u64]) {
    let total = counts.iter().sum::<u64>().max(1) as f64;
    for (row, &count) in values.chunks_exact_mut(dim).zip(counts) {
        let weight = (SIF_A / (SIF_A + count as f64 / total)) as f32;
        row.iter_mut().for_each(|v| *v *= weight);
    }
}

fn cache_key(teacher_dir: &Path, tokens: &[String], counts: &[u64], settings: VectorSettings) -> String {
    let mut hasher = Sha256::new();
    for file in ["model.safetensors", "config.json", "vocab.txt", "tokenizer.json"] {
        if let Ok(bytes) = std::fs::read(teacher_dir.join(file)) {
            hasher.update(file.as_bytes());
            hasher.update(Sha256::digest(&bytes));
        }
    }
    hasher.update(format!("{settings:?}").as_bytes());
    for token in tokens {
        hasher.update(token.as_bytes());
        hasher.update([0u8]);
    }
    if settings.weighting == Weighting::Sif {
        counts.iter().for_each(|c| hasher.update(c.to_le_bytes()));
    }
    hasher.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// A cache file's vectors and explained share, if it is whole and of the expected shape.
fn read_cached(file: &Path, entries: usize, dim: usize) -> Option<(Vec<f32>, f64)> {
    if !safetensors_intact(file) {
        return None;
    }
    let bytes = std::fs::read(file).ok()?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
    let explained = header.metadata().as_ref()?.get("explained")?.parse().ok()?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes).ok()?;
    let view = tensors.tensor("vectors").ok()?;
    if view.shape() != [entries, dim] {
        return None;
    }
    let values = f32_values(view.data());
    values.iter().all(|v| v.is_finite()).then_some((values, explained))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_finds_the_known_directions() {
        // Points spread 3, 2 and 0.5 along three orthonormal directions rotated off the axes.
        let s = std::f64::consts::FRAC_1_SQRT_2;
        let axes = [[s, s, 0.0], [-s, s, 0.0], [0.0, 0.0, 1.0]];
        let spreads = [3.0, 2.0, 0.5];
        let mut x = Vec::new();
        for (a, b, c) in [(1.0, 1.0, 1.0), (-1.0, 1.0, -1.0), (1.0, -1.0, -1.0), (-1.0, -1.0, 1.0)] {
            let point = (0..3).map(|k| a * spreads[0] * axes[0][k] + b * spreads[1] * axes[1][k] + c * spreads[2] * axes[2][k] + 10.0);
            x.extend(point.map(|v| v as f32));
        }
        let keep: Vec<usize> = (0..4).collect();
        let (projected, explained) = pca(&x, 3, &keep, 2);
        // Coordinates along the two widest directions, up to each direction's sign.
        let (s0, s1) = (projected[0].signum(), projected[1].signum());
        for (row, (a, b)) in projected.chunks(2).zip([(1.0, 1.0), (-1.0, 1.0), (1.0, -1.0), (-1.0, -1.0)]) {
            assert!((row[0] - s0 * 3.0 * a).abs() < 1e-5 && (row[1] - s1 * 2.0 * b).abs() < 1e-5, "{row:?}");
        }
        assert!((explained - 13.0 / 13.25).abs() < 1e-9, "{explained}");
    }

    #[test]
    fn jacobi_diagonalises() {
        let m = [4.0, 1.0, 2.0, 1.0, 3.0, 0.5, 2.0, 0.5, 5.0];
        let (values, vectors) = symmetric_eigen(&m, 3);
        for j in 0..3 {
            for r in 0..3 {
                let mv: f64 = (0..3).map(|c| m[r * 3 + c] * vectors[c * 3 + j]).sum();
                assert!((mv - values[j] * vectors[r * 3 + j]).abs() < 1e-10);
            }
        }
        assert!((values.iter().sum::<f64>() - 12.0).abs() < 1e-10, "the trace is kept");
    }

    #[test]
    fn sif_scales_frequent_entries_down() {
        let mut values = vec![1.0f32; 6];
        sif_weight(&mut values, 2, &[0, 999, 1]);
        assert_eq!(&values[..2], &[1.0, 1.0]);
        assert!((values[2] - (1e-3 / (1e-3 + 0.999)) as f32).abs() < 1e-7);
        assert!((values[4] - (1e-3 / (1e-3 + 0.001)) as f32).abs() < 1e-7);
    }
}
