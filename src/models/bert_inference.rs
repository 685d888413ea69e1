//! Teacher inference: a BERT packed once for the forward pass alone, in FP32, BF16 or INT8
//! (the transfer set's logits, dev evaluation, `distill predict`).
//!
//! The same arithmetic as [`BertModel::forward`] without a tape. A batch goes: the real tokens
//! of every example, padding dropped, one row each → word + position + token-type embeddings →
//! LayerNorm → N × (one GEMM for query, key and value → per example and head: scale, softmax
//! and the weighted sum of values in one pass over its own tokens → output GEMM → residual +
//! LayerNorm in one pass → intermediate GEMM with GELU fused → output GEMM → residual +
//! LayerNorm) → [CLS] → pooler → classifier. Only the encoder's GEMMs change with the
//! precision; embeddings, attention, LayerNorm, GELU, pooler and classifier stay FP32.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::bert::{BertForSequenceClassification, BertInput, BertModel};
use super::layers::{contiguous_values, LayerNorm, Linear};
use crate::ops::packed::{Activation, PackedLinear, Precision};
use crate::ops::simd::{dispatch, exp_fast};

/// LayerNorm parameters as plain values.
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn new(norm: &LayerNorm) -> Norm {
        Norm { gamma: norm.weight.as_vec(), beta: norm.bias.as_vec(), eps: norm.eps as f32 }
    }

    /// `x = LayerNorm(x + residual)` row by row, in place (`residual` may be empty: none).
    fn apply(&self, x: &mut [f32], residual: &[f32]) {
        let dim = self.gamma.len();
        x.par_chunks_mut(dim).enumerate().for_each(|(index, row)| {
            let residual = if residual.is_empty() { &[][..] } else { &residual[index * dim..(index + 1) * dim] };
            add_norm_row(row, residual, &self.gamma, &self.beta, self.eps)
        });
    }
}

dispatch!(fn add_norm_row = add_norm_row_generic(row: &mut [f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32));

/// Sum of `values` in sixteen running lanes (so it vectorises), then across them.
#[inline(always)]
fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        lanes.iter_mut().zip(chunk).for_each(|(s, &v)| *s += f(v));
    }
    chunks.remainder().iter().map(|&v| f(v)).sum::<f32>() + lanes.iter().sum::<f32>()
}

/// Maximum of `values` (not empty) in sixteen running lanes, then across them.
#[inline(always)]
fn lane_max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        lanes.iter_mut().zip(chunk).for_each(|(m, &v)| *m = if v > *m { v } else { *m });
    }
    chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

#[inline(always)]
fn add_norm_row_generic(row: &mut [f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let dim = row.len() as f32;
    if !residual.is_empty() {
        row.iter_mut().zip(residual).for_each(|(v, r)| *v += r);
    }
    let mean = lane_sum(row, |v| v) / dim;
    let var = lane_sum(row, |v| (v - mean) * (v - mean)) / dim;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = (*v - mean) * inv * g + b;
    }
}

struct InferenceLayer {
    /// `attention.self.{query,key,value}` stacked: one GEMM with 3 × hidden outputs.
    qkv: PackedLinear,
    attention_output: PackedLinear,
    attention_norm: Norm,
    intermediate: PackedLinear,
    output: PackedLinear,
    output_norm: Norm,
}

/// A BERT (with its classification head, if built from one) ready for inference.
pub struct BertInference {
    precision: Precision,
    hidden: usize,
    heads: usize,
    word_embeddings: Vec<f32>,
    position_embeddings: Vec<f32>,
    token_type_embeddings: Vec<f32>,
    embeddings_norm: Norm,
    layers: Vec<InferenceLayer>,
    /// Pooler and classifier (FP32), when built from a classifier.
    head: Option<(PackedLinear, PackedLinear)>,
}

fn packed(linear: &Linear, precision: Precision) -> PackedLinear {
    let (outputs, inputs) = *linear.weight.shape();
    PackedLinear::new(&contiguous_values(&linear.weight), &linear.bias.as_vec(), outputs, inputs, precision)
}

impl BertInference {
    /// The encoder alone (for [`BertInference::last_hidden_state`]).
    pub fn encoder(bert: &BertModel, precision: Precision) -> BertInference {
        let e = &bert.embeddings;
        let layers = bert
            .encoder_layers
            .iter()
            .map(|layer| {
                let a = &layer.attention_self;
                let mut weight = contiguous_values(&a.query.weight);
                weight.extend(contiguous_values(&a.key.weight));
                weight.extend(contiguous_values(&a.value.weight));
                let mut bias = a.query.bias.as_vec();
                bias.extend(a.key.bias.as_vec());
                bias.extend(a.value.bias.as_vec());
                let h = bert.config.hidden_size;
                InferenceLayer {
                    qkv: PackedLinear::new(&weight, &bias, 3 * h, h, precision),
                    attention_output: packed(&layer.attention_output.dense, precision),
                    attention_norm: Norm::new(&layer.attention_output.layer_norm),
                    intermediate: packed(&layer.intermediate, precision),
                    output: packed(&layer.output.dense, precision),
                    output_norm: Norm::new(&layer.output.layer_norm),
                }
            })
            .collect();
        BertInference {
            precision,
            hidden: bert.config.hidden_size,
            heads: bert.config.num_attention_heads,
            word_embeddings: contiguous_values(&e.word_embeddings),
            position_embeddings: contiguous_values(&e.position_embeddings),
            token_type_embeddings: contiguous_values(&e.token_type_embeddings),
            embeddings_norm: Norm::new(&e.layer_norm),
            layers,
            head: None,
        }
    }

    /// Encoder, pooler and classifier.
    pub fn new(model: &BertForSequenceClassification, precision: Precision) -> BertInference {
        let pooler = model.bert.pooler.as_ref().expect("load() always sets a pooler");
        BertInference {
            head: Some((packed(pooler, Precision::F32), packed(&model.classifier, Precision::F32))),
            ..BertInference::encoder(&model.bert, precision)
        }
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn num_labels(&self) -> usize {
        self.head.as_ref().map_or(0, |(_, classifier)| classifier.outputs())
    }

    /// The last hidden state of every kept token, `[Σ lengths, hidden]`, example after example,
    /// and the tokens kept per example: its length, but at least one (an empty row still gets a
    /// [CLS] position, padding, as the padded graph gives it).
    fn encode(&self, input: &BertInput) -> (Vec<f32>, Vec<usize>) {
        self.encode_layers(input, self.layers.len())
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// As [`BertInference::encode`], but the hidden state after the first `layers` layers
    /// (0: the embeddings' output).
    pub fn encode_layers(&self, input: &BertInput, layers: usize) -> (Vec<f32>, Vec<usize>) {
        let h = self.hidden;
        let lengths: Vec<usize> = input.lengths.iter().map(|&len| len.clamp(1, input.seq)).collect();
        let tokens: Vec<usize> =
            lengths.iter().enumerate().flat_map(|(b, &len)| (0..len).map(move |t| b * input.seq + t)).collect();
        let rows = tokens.len();
        let mut x = vec![0f32; rows * h];
        for (row, &i) in x.chunks_exact_mut(h).zip(&tokens) {
            let (w, p, t) = (input.ids[i] * h, (i % input.seq) * h, input.token_types[i] * h);
            let parts = self.word_embeddings[w..w + h].iter().zip(&self.position_embeddings[p..p + h]).zip(&self.token_type_embeddings[t..t + h]);
            row.iter_mut().zip(parts).for_each(|(x, ((w, p), t))| *x = w + p + t);
        }
        self.embeddings_norm.apply(&mut x, &[]);
        for layer in &self.layers[..layers] {
            let qkv = layer.qkv.forward(&x, rows, Activation::None);
            let context = self.attention(&qkv, &lengths);
            let mut attended = layer.attention_output.forward(&context, rows, Activation::None);
            layer.attention_norm.apply(&mut attended, &x);
            let inner = layer.intermediate.forward(&attended, rows, Activation::Gelu);
            x = layer.output.forward(&inner, rows, Activation::None);
            layer.output_norm.apply(&mut x, &attended);
        }
        (x, lengths)
    }

    /// Context `[Σ lengths, hidden]` from stacked `[query | key | value]` rows; each example
    /// attends over its own tokens only (what the additive padding mask does in training).
    fn attention(&self, qkv: &[f32], lengths: &[usize]) -> Vec<f32> {
        let h = self.hidden;
        let mut context = vec![0f32; qkv.len() / 3];
        let mut slices: Vec<(&[f32], &mut [f32])> = Vec::with_capacity(lengths.len());
        let (mut rest_in, mut rest_out) = (qkv, context.as_mut_slice());
        for &len in lengths {
            let (a, b) = rest_in.split_at(len * 3 * h);
            let (c, d) = std::mem::take(&mut rest_out).split_at_mut(len * h);
            slices.push((a, c));
            rest_in = b;
            rest_out = d;
        }
        let (heads, head_dim) = (self.heads, h / self.heads);
        slices.into_par_iter().for_each(|(qkv, out)| attend_example(qkv, out, heads, head_dim));
        context
    }

    /// Last hidden state `[batch·seq, hidden]` (padding rows are zero).
    pub fn last_hidden_state(&self, input: &BertInput) -> Vec<f32> {
        let h = self.hidden;
        let (encoded, lengths) = self.encode(input);
        let mut out = vec![0f32; input.batch() * input.seq * h];
        let mut offset = 0;
        for (b, len) in lengths.into_iter().enumerate() {
            out[b * input.seq * h..(b * input.seq + len) * h].copy_from_slice(&encoded[offset * h..(offset + len) * h]);
            offset += len;
        }
        out
    }

    /// Logits `[batch, num_labels]`, row-major.
    pub fn logits(&self, input: &BertInput) -> Vec<f32> {
        let h = self.hidden;
        let (pooler, classifier) = self.head.as_ref().expect("BertInference::new builds the head");
        let (encoded, lengths) = self.encode(input);
        let mut cls = Vec::with_capacity(input.batch() * h);
        let mut offset = 0;
        for len in lengths {
            cls.extend_from_slice(&encoded[offset * h..(offset + 1) * h]);
            offset += len;
        }
        let mut pooled = pooler.forward(&cls, input.batch(), Activation::None);
        pooled.iter_mut().for_each(|v| *v = v.tanh());
        classifier.forward(&pooled, input.batch(), Activation::None)
    }
}

dispatch!(
    /// One example's attention, all heads: `qkv` is `[len, 3·hidden]`, `out` is `[len, hidden]`.
    fn attend_example = attend_example_generic(qkv: &[f32], out: &mut [f32], heads: usize, head_dim: usize)
);

/// Keys and value columns per block (one 16-lane register); fixed-size blocks let the
/// compiler keep the sums in registers.
const BLOCK: usize = 16;
/// Query rows per tile.
const QUERIES: usize = 4;

#[inline(always)]
fn attend_example_generic(qkv: &[f32], out: &mut [f32], heads: usize, head_dim: usize) {
    let hidden = heads * head_dim;
    let len = out.len() / hidden;
    let padded = len.div_ceil(BLOCK) * BLOCK;
    let scale = 1.0 / (head_dim as f32).sqrt();
    // Keys transposed, `[head_dim, padded]` (zeros past `len`), so scores run along keys.
    let mut keys_t = vec![0f32; head_dim * padded];
    let mut scores = vec![0f32; QUERIES * padded];
    for head in 0..heads {
        let col = head * head_dim;
        for j in 0..len {
            let key = &qkv[j * 3 * hidden + hidden + col..j * 3 * hidden + hidden + col + head_dim];
            for (c, &k) in key.iter().enumerate() {
                keys_t[c * padded + j] = k;
            }
        }
        // Queries in tiles of QUERIES rows, so each key and value block loaded serves all of them.
        for i0 in (0..len).step_by(QUERIES) {
            let rows = QUERIES.min(len - i0);
            // A tile past the last query repeats it (computed, never written), so the loops below
            // always run QUERIES rows and unroll fully.
            let query = |q: usize| {
                let i = (i0 + q).min(len - 1);
                &qkv[i * 3 * hidden + col..i * 3 * hidden + col + head_dim]
            };
            for jb in 0..padded / BLOCK {
                let mut acc = [[0f32; BLOCK]; QUERIES];
                for c in 0..head_dim {
                    let keys: &[f32; BLOCK] = keys_t[c * padded + jb * BLOCK..][..BLOCK].try_into().expect("one block");
                    for (q, acc) in acc.iter_mut().enumerate() {
                        let x = query(q)[c];
                        for l in 0..BLOCK {
                            acc[l] += x * keys[l];
                        }
                    }
                }
                for (q, acc) in acc.iter().enumerate() {
                    scores[q * padded + jb * BLOCK..][..BLOCK].copy_from_slice(acc);
                }
            }
            let mut inv = [0f32; QUERIES];
            for (q, inv) in inv.iter_mut().enumerate().take(rows) {
                let row = &mut scores[q * padded..q * padded + len];
                // Max, exponentials and sum as separate passes: each vectorises on its own.
                let max = lane_max(row);
                row.iter_mut().for_each(|s| *s = exp_fast((*s - max) * scale));
                *inv = 1.0 / lane_sum(row, |v| v);
            }
            let values = |j: usize| 2 * hidden + j * 3 * hidden + col;
            if head_dim.is_multiple_of(BLOCK) {
                for cb in 0..head_dim / BLOCK {
                    let mut acc = [[0f32; BLOCK]; QUERIES];
                    for j in 0..len {
                        let value: &[f32; BLOCK] = qkv[values(j) + cb * BLOCK..][..BLOCK].try_into().expect("one block");
                        for (q, acc) in acc.iter_mut().enumerate() {
                            let p = scores[q * padded + j];
                            for l in 0..BLOCK {
                                acc[l] += p * value[l];
                            }
                        }
                    }
                    for (q, acc) in acc.iter().enumerate().take(rows) {
                        let o = (i0 + q) * hidden + col + cb * BLOCK;
                        out[o..o + BLOCK].iter_mut().zip(acc).for_each(|(o, a)| *o = a * inv[q]);
                    }
                }
            } else {
                for q in 0..rows {
                    let row = &mut out[(i0 + q) * hidden + col..(i0 + q) * hidden + col + head_dim];
                    row.fill(0.0);
                    for j in 0..len {
                        let p = scores[q * padded + j] * inv[q];
                        row.iter_mut().zip(&qkv[values(j)..values(j) + head_dim]).for_each(|(o, v)| *o += p * v);
                    }
                }
            }
        }
    }
}
