//! The Bi-LSTM student of Tang et al. 2019 / PaddleNLP's `distill_lstm`:
//!
//! token ids → embedding → (dropout) → Bi-LSTM → [final forward state, final backward state]
//! → (pair tasks: features of the two texts) → (dropout) → tanh(fc) → output_layer → logits.
//!
//! Sizes come from the experiment at run time. Tensor names and layouts match PyTorch
//! (`embedder.weight`, `lstm.weight_ih_l0[_reverse]`, `fc.weight` as `[out, in]`, …), so a
//! saved student loads into an equivalent `torch.nn` module unchanged.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use dfdx::prelude::*;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::layers::{contiguous_values, f32_values, safetensors_bytes, uniform, Embedding, Linear, ParamMut, RowGrads};
use super::lstm::{bilstm_final_states, bilstm_final_states_cached, LstmDirection, Matrix, Packing, ProjectionCache};
use std::sync::Mutex;
use crate::config::PairFeatures;
use crate::files::write_atomic;
use crate::ops::dropout::{dropout, DropoutRng};
use crate::ops::packed::Precision;

/// Everything that fixes the student's parameter shapes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct StudentShape {
    pub vocab_size: usize,
    pub embedding_dim: usize,
    pub hidden_size: usize,
    pub fc_size: usize,
    pub num_labels: usize,
    /// `Some` for sentence-pair tasks.
    pub pair_features: Option<PairFeatures>,
}

impl StudentShape {
    fn features(&self) -> usize {
        let encoded = 2 * self.hidden_size;
        match self.pair_features {
            None => encoded,
            Some(_) => 4 * encoded,
        }
    }
}

/// A batch of token sequences in packed layout (no padding), as the encoder reads it.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    pub packing: Packing,
    /// Token ids in packed order.
    pub ids: Vec<usize>,
}

impl TokenBatch {
    /// Packs `seqs`; an empty sequence becomes one `[UNK]`-like `empty_id` token.
    pub fn new(seqs: &[&[u32]], empty_id: u32) -> TokenBatch {
        let fallback = [empty_id];
        let seqs: Vec<&[u32]> = seqs.iter().map(|s| if s.is_empty() { &fallback[..] } else { *s }).collect();
        let lengths: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let packing = Packing::new(&lengths);
        let ids = packing.pack(&seqs).into_iter().map(|id| id as usize).collect();
        TokenBatch { packing, ids }
    }

    pub fn rows(&self) -> usize {
        self.packing.batch()
    }

    /// The distinct token ids in the batch, sorted.
    pub fn distinct_ids(&self) -> Vec<usize> {
        let mut ids = self.ids.clone();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// Inputs of one forward pass: one text per example, or (for pairs) all `a` texts then all `b` texts.
#[derive(Debug, Clone)]
pub struct StudentInput {
    pub tokens: TokenBatch,
    /// Number of examples; `tokens.rows()` is twice this for pairs.
    pub examples: usize,
}

pub struct BiLstmStudent {
    pub shape: StudentShape,
    pub dropout: f32,
    pub embedder: Embedding,
    pub lstm_forward: LstmDirection,
    pub lstm_backward: LstmDirection,
    pub fc: Linear,
    pub output_layer: Linear,
    /// Inference cache of input projections; cleared whenever parameters can change.
    projections: Mutex<Option<ProjectionCache>>,
    /// The recurrent product's number format in [`BiLstmStudent::predict_logits`] (FP32
    /// unless set for `distill predict --precision`); training is always FP32.
    inference_precision: Precision,
}

impl Clone for BiLstmStudent {
    fn clone(&self) -> Self {
        BiLstmStudent {
            shape: self.shape,
            dropout: self.dropout,
            embedder: self.embedder.clone(),
            lstm_forward: self.lstm_forward.clone(),
            lstm_backward: self.lstm_backward.clone(),
            fc: self.fc.clone(),
            output_layer: self.output_layer.clone(),
            projections: Mutex::new(None),
            inference_precision: self.inference_precision,
        }
    }
}

impl BiLstmStudent {
    pub fn new(shape: StudentShape, dropout: f32, dev: &Cpu, rng: &mut StdRng) -> BiLstmStudent {
        let (e, h) = (shape.embedding_dim, shape.hidden_size);
        let k = 1.0 / (h as f32).sqrt();
        let direction = |rng: &mut StdRng| LstmDirection {
            weight_ih: uniform(dev, (4 * h, e), k, rng),
            weight_hh: uniform(dev, (4 * h, h), k, rng),
            bias_ih: uniform(dev, (4 * h,), k, rng),
            bias_hh: uniform(dev, (4 * h,), k, rng),
        };
        let lstm_forward = direction(rng);
        let lstm_backward = direction(rng);
        let embedder = Embedding::new(uniform(dev, (shape.vocab_size, e), 0.1, rng).as_vec(), shape.vocab_size, e);
        BiLstmStudent {
            shape,
            dropout,
            embedder,
            lstm_forward,
            lstm_backward,
            fc: Linear::new(dev, shape.features(), shape.fc_size, rng),
            output_layer: Linear::new(dev, shape.fc_size, shape.num_labels, rng),
            projections: Mutex::new(None),
            inference_precision: Precision::F32,
        }
    }

    /// The number format of the recurrent product in [`BiLstmStudent::predict_logits`].
    pub fn set_inference_precision(&mut self, precision: Precision) {
        self.inference_precision = precision;
        *self.projections.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Logits `[examples, num_labels]` from `x`, the embedding rows of the batch's tokens
    /// in packed order (`[tokens, E]`, [`BiLstmStudent::embed`]), traced or not: the tape
    /// starts there and flows left to right through the whole graph. `dropout_rng` is
    /// `Some` in training: dropout applies, drawing its masks from it.
    pub fn forward<T: Tape<f32, Cpu>>(&self, x: Matrix<T>, input: &StudentInput, dropout_rng: Option<&DropoutRng>) -> Matrix<T> {
        let x = self.maybe_dropout(x, dropout_rng);
        let encoded = bilstm_final_states(x, &input.tokens.packing, &self.lstm_forward, &self.lstm_backward);
        self.head(encoded, input.examples, dropout_rng)
    }

    /// The embedding rows of the batch's tokens, in packed order: `[tokens, E]`.
    pub fn embed(&self, tokens: &TokenBatch) -> Matrix {
        let dev = self.lstm_forward.weight_ih.device();
        dev.tensor_from_vec(self.embedder.lookup(&tokens.ids), (tokens.ids.len(), self.shape.embedding_dim))
    }

    /// Encoder output `[rows, 2H]` → logits: pair features, dropout, tanh(fc), output layer.
    fn head<T: Tape<f32, Cpu>>(&self, encoded: Matrix<T>, examples: usize, dropout_rng: Option<&DropoutRng>) -> Matrix<T> {
        let features = match self.shape.pair_features {
            None => encoded,
            Some(mode) => pair_features(encoded, examples, mode),
        };
        let features = self.maybe_dropout(features, dropout_rng);
        let hidden = self.fc.forward(features).tanh();
        self.output_layer.forward(hidden)
    }

    /// Logits with dropout (masks drawn from `dropout_rng`) and a gradient tape, and what
    /// turns the gradients into the embedding's row gradients after the backward pass.
    pub fn forward_train(&self, input: &StudentInput, dropout_rng: &DropoutRng) -> (Matrix<OwnedTape<f32, Cpu>>, EmbeddingTrace) {
        let x = self.embed(&input.tokens);
        let trace = EmbeddingTrace { rows: x.clone(), ids: input.tokens.ids.clone() };
        (self.forward(x.leaky_trace(), input, Some(dropout_rng)), trace)
    }

    /// Logits for evaluation and prediction: no dropout, no tape, and the input projections
    /// of the embedding rows cached across calls.
    pub fn predict_logits(&self, input: &StudentInput) -> Vec<f32> {
        let tokens = &input.tokens;
        let encoded = {
            let mut guard = self.projections.lock().unwrap_or_else(|e| e.into_inner());
            let cache = guard.get_or_insert_with(|| {
                ProjectionCache::new(self.shape.vocab_size, &self.lstm_forward, &self.lstm_backward, self.inference_precision)
            });
            bilstm_final_states_cached(&tokens.ids, &tokens.packing, &self.embedder, &self.lstm_forward, &self.lstm_backward, cache)
        };
        let encoded = self.lstm_forward.weight_ih.device().tensor_from_vec(encoded, (tokens.rows(), 2 * self.shape.hidden_size));
        self.head(encoded, input.examples, None).as_vec()
    }

    /// Logits through the plain graph (the path training uses), without the cache.
    pub fn predict_logits_uncached(&self, input: &StudentInput) -> Vec<f32> {
        self.forward(self.embed(&input.tokens), input, None).as_vec()
    }

    fn maybe_dropout<T: Tape<f32, Cpu>>(&self, x: Matrix<T>, dropout_rng: Option<&DropoutRng>) -> Matrix<T> {
        match dropout_rng {
            Some(rng) if self.dropout > 0.0 => dropout(x, self.dropout, rng),
            _ => x,
        }
    }

    /// Parameters with their checkpoint names, embedding first.
    pub fn params_mut(&mut self) -> Vec<(String, ParamMut<'_>)> {
        *self.projections.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
        let mut out = vec![("embedder.weight".to_string(), ParamMut::Embedding(&mut self.embedder))];
        for (suffix, d) in [("", &mut self.lstm_forward), ("_reverse", &mut self.lstm_backward)] {
            out.push((format!("lstm.weight_ih_l0{suffix}"), ParamMut::Matrix(&mut d.weight_ih)));
            out.push((format!("lstm.weight_hh_l0{suffix}"), ParamMut::Matrix(&mut d.weight_hh)));
            out.push((format!("lstm.bias_ih_l0{suffix}"), ParamMut::Vector(&mut d.bias_ih)));
            out.push((format!("lstm.bias_hh_l0{suffix}"), ParamMut::Vector(&mut d.bias_hh)));
        }
        self.fc.params_mut("fc", &mut out);
        self.output_layer.params_mut("output_layer", &mut out);
        out
    }

    pub fn num_params(&mut self) -> usize {
        self.params_mut().iter().map(|(_, p)| p.dims().iter().product::<usize>()).sum()
    }

    /// Writes the weights as safetensors, with the shape in the header metadata.
    pub fn save(&mut self, path: &Path) -> Result<()> {
        let shape_json = serde_json::to_string(&self.shape)?;
        let metadata = HashMap::from([
            ("format".to_string(), "pt".to_string()),
            ("distill.student_shape".to_string(), shape_json),
            ("distill.dropout".to_string(), self.dropout.to_string()),
        ]);
        let bytes = safetensors_bytes(&self.params_mut(), metadata)?;
        write_atomic(path, &bytes)
    }

    /// Loads a student saved by [`BiLstmStudent::save`].
    pub fn load(path: &Path, dev: &Cpu) -> Result<BiLstmStudent> {
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read the checkpoint", path.display()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .with_context(|| format!("{}: not a safetensors file", path.display()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let shape: StudentShape = serde_json::from_str(
            meta.get("distill.student_shape")
                .with_context(|| format!("{}: no distill.student_shape in the metadata; not a distill student", path.display()))?,
        )?;
        let dropout: f32 = meta.get("distill.dropout").and_then(|d| d.parse().ok()).unwrap_or(0.0);
        let mut student = BiLstmStudent::new(shape, dropout, dev, &mut rand::SeedableRng::seed_from_u64(0));
        let tensors = safetensors::SafeTensors::deserialize(&bytes)?;
        for (name, mut param) in student.params_mut() {
            let view = tensors
                .tensor(&name)
                .with_context(|| format!("{}: missing tensor {name}", path.display()))?;
            if view.dtype() != safetensors::Dtype::F32 {
                bail!("{}: tensor {name} is {:?}; expected F32", path.display(), view.dtype());
            }
            if view.shape() != param.dims().as_slice() {
                bail!("{}: tensor {name} has shape {:?}; expected {:?}", path.display(), view.shape(), param.dims());
            }
            param.set_values(&f32_values(view.data()));
        }
        Ok(student)
    }
}

/// The looked-up embedding rows of one training pass, to read their gradient back as the
/// embedding's [`RowGrads`] (only the batch's rows; the table never enters the graph).
pub struct EmbeddingTrace {
    rows: Matrix,
    ids: Vec<usize>,
}

impl EmbeddingTrace {
    pub fn row_grads(&self, grads: &Gradients<f32, Cpu>) -> RowGrads {
        let dim = self.rows.shape().1;
        RowGrads::from_lookup(&self.ids, &contiguous_values(&grads.get(&self.rows)), dim)
    }
}

/// Sentence-pair features `[B, 4D]` from encodings `[2·B, D]` (all `a` rows, then all `b`
/// rows): `[a, b, |a−b|, a·b]` (Tang) or `[a, b, a+b, |a−b|]` (the seed).
pub fn pair_features<T: Tape<f32, Cpu>>(encoded: Matrix<T>, examples: usize, mode: PairFeatures) -> Matrix<T> {
    let (rows, d) = *encoded.shape();
    assert_eq!(rows, 2 * examples, "pair encodings must hold a and b rows");
    let (encoded, mut tape) = encoded.split_tape();
    let e = encoded.as_vec();
    let (a, b) = e.split_at(examples * d);
    let width = 4 * d;
    let mut out = vec![0f32; examples * width];
    for r in 0..examples {
        let (ar, br) = (&a[r * d..(r + 1) * d], &b[r * d..(r + 1) * d]);
        let o = &mut out[r * width..(r + 1) * width];
        for j in 0..d {
            o[j] = ar[j];
            o[d + j] = br[j];
            let (third, fourth) = match mode {
                PairFeatures::Tang => ((ar[j] - br[j]).abs(), ar[j] * br[j]),
                PairFeatures::Seed => (ar[j] + br[j], (ar[j] - br[j]).abs()),
            };
            o[2 * d + j] = third;
            o[3 * d + j] = fourth;
        }
    }
    let out = encoded.device().tensor_from_vec(out, (examples, width));
    let (in_ghost, out_ghost) = (encoded.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        let g: Vec<f32> = grads.get_or_alloc_mut(&out_ghost)?.to_vec();
        let d_in = grads.get_or_alloc_mut(&in_ghost)?;
        let (a, b) = e.split_at(examples * d);
        for r in 0..examples {
            let gr = &g[r * width..(r + 1) * width];
            for j in 0..d {
                let (av, bv) = (a[r * d + j], b[r * d + j]);
                let sign = if av > bv { 1.0 } else if av < bv { -1.0 } else { 0.0 };
                let (g3, g4) = (gr[2 * d + j], gr[3 * d + j]);
                let (da, db) = match mode {
                    PairFeatures::Tang => (gr[j] + sign * g3 + bv * g4, gr[d + j] - sign * g3 + av * g4),
                    PairFeatures::Seed => (gr[j] + g3 + sign * g4, gr[d + j] + g3 - sign * g4),
                };
                d_in[r * d + j] += da;
                d_in[(examples + r) * d + j] += db;
            }
        }
        Ok(())
    });
    out.put_tape(tape)
}
