//! BERT in dfdx, any size from an HF `config.json`.
//!
//! The structs mirror Hugging Face's module tree (`embeddings`, `encoder.layer.N.attention.
//! self.query`, …), so loading a checkpoint is one name prefix per struct. A batch goes:
//! token ids → word + position + token-type embeddings → LayerNorm → N × (masked multi-head
//! self-attention → residual + LayerNorm → GELU feed-forward → residual + LayerNorm) →
//! last hidden state; the pooler is tanh(dense([CLS])).
//!
//! Activations are kept 2-D (`[batch·seq, hidden]`) around the linear layers: dfdx's GEMM is
//! much faster on one flat product than on a batch of small ones.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dfdx::prelude::*;
use serde::Deserialize;

use super::layers::{LayerNorm, Linear, ParamMut};
use super::lstm::{Matrix, Vector};

/// The fields of an HF BERT `config.json` that fix the architecture.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}

impl BertConfig {
    pub fn load(path: &Path) -> Result<BertConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let config: BertConfig =
            serde_json::from_str(&text).with_context(|| format!("{}: not a BERT config.json", path.display()))?;
        if !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            bail!(
                "{}: hidden_size {} is not a multiple of num_attention_heads {}",
                path.display(),
                config.hidden_size,
                config.num_attention_heads
            );
        }
        if config.hidden_act != "gelu" {
            bail!("{}: hidden_act {:?} is not supported; only \"gelu\"", path.display(), config.hidden_act);
        }
        Ok(config)
    }
}

/// The tensors of a `model.safetensors`, read by HF name with shape and dtype checks.
pub struct Weights<'a> {
    path: PathBuf,
    tensors: safetensors::SafeTensors<'a>,
    dev: Cpu,
}

impl<'a> Weights<'a> {
    pub fn new(path: &Path, bytes: &'a [u8], dev: &Cpu) -> Result<Weights<'a>> {
        let tensors = safetensors::SafeTensors::deserialize(bytes)
            .with_context(|| format!("{}: not a safetensors file", path.display()))?;
        Ok(Weights { path: path.to_path_buf(), tensors, dev: dev.clone() })
    }

    fn values(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>> {
        let view = self.tensors.tensor(name).map_err(|_| {
            anyhow::anyhow!("{}: missing tensor {name} (is this a BERT checkpoint with HF names?)", self.path.display())
        })?;
        if view.dtype() != safetensors::Dtype::F32 {
            bail!(
                "{}: tensor {name} is {:?}; only F32 is supported (convert the checkpoint to float32)",
                self.path.display(),
                view.dtype()
            );
        }
        if view.shape() != dims {
            bail!("{}: tensor {name} has shape {:?}; config.json implies {:?}", self.path.display(), view.shape(), dims);
        }
        Ok(view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
    }

    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
        Ok(self.dev.tensor_from_vec(self.values(name, &[rows, cols])?, (rows, cols)))
    }

    pub fn vector(&self, name: &str, len: usize) -> Result<Vector> {
        Ok(self.dev.tensor_from_vec(self.values(name, &[len])?, (len,)))
    }

    pub fn linear(&self, prefix: &str, inputs: usize, outputs: usize) -> Result<Linear> {
        Ok(Linear {
            weight: self.matrix(&format!("{prefix}.weight"), outputs, inputs)?,
            bias: self.vector(&format!("{prefix}.bias"), outputs)?,
        })
    }

    pub fn layer_norm(&self, prefix: &str, dim: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.vector(&format!("{prefix}.weight"), dim)?,
            bias: self.vector(&format!("{prefix}.bias"), dim)?,
            eps,
        })
    }

    /// Whether the checkpoint names a tensor (for optional parts such as the pooler).
    pub fn has(&self, name: &str) -> bool {
        self.tensors.tensor(name).is_ok()
    }
}

/// A padded batch for BERT: ids, token types and true lengths, row-major `[batch, seq]`.
#[derive(Debug, Clone)]
pub struct BertInput {
    pub ids: Vec<usize>,
    pub token_types: Vec<usize>,
    pub lengths: Vec<usize>,
    pub seq: usize,
}

impl BertInput {
    /// Pads `(ids, token types)` per row to the longest row with `pad_id`.
    pub fn new(rows: &[(Vec<u32>, Vec<u32>)], pad_id: u32) -> BertInput {
        let seq = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(1).max(1);
        let mut ids = vec![pad_id as usize; rows.len() * seq];
        let mut token_types = vec![0usize; rows.len() * seq];
        for (b, (row_ids, row_types)) in rows.iter().enumerate() {
            for (t, (&id, &ty)) in row_ids.iter().zip(row_types).enumerate() {
                ids[b * seq + t] = id as usize;
                token_types[b * seq + t] = ty as usize;
            }
        }
        BertInput { ids, token_types, lengths: rows.iter().map(|(ids, _)| ids.len()).collect(), seq }
    }

    pub fn batch(&self) -> usize {
        self.lengths.len()
    }
}

#[derive(Clone, Debug)]
pub struct BertEmbeddings {
    pub word_embeddings: Matrix,
    pub position_embeddings: Matrix,
    pub token_type_embeddings: Matrix,
    pub layer_norm: LayerNorm,
}

impl BertEmbeddings {
    fn load(w: &Weights, prefix: &str, c: &BertConfig) -> Result<Self> {
        Ok(BertEmbeddings {
            word_embeddings: w.matrix(&format!("{prefix}.word_embeddings.weight"), c.vocab_size, c.hidden_size)?,
            position_embeddings: w.matrix(
                &format!("{prefix}.position_embeddings.weight"),
                c.max_position_embeddings,
                c.hidden_size,
            )?,
            token_type_embeddings: w.matrix(
                &format!("{prefix}.token_type_embeddings.weight"),
                c.type_vocab_size,
                c.hidden_size,
            )?,
            layer_norm: w.layer_norm(&format!("{prefix}.LayerNorm"), c.hidden_size, c.layer_norm_eps)?,
        })
    }

    /// `[batch·seq, hidden]` from `word_embeddings` (which carries the tape).
    fn forward<T: Tape<f32, Cpu>>(&self, word_embeddings: Matrix<T>, input: &BertInput) -> Matrix<T> {
        let dev = word_embeddings.device().clone();
        let n = input.ids.len();
        let positions: Vec<usize> = (0..n).map(|i| i % input.seq).collect();
        let words: Matrix<T> = word_embeddings.gather(dev.tensor_from_vec(input.ids.clone(), (n,)));
        let pos: Matrix<T> = self.position_embeddings.retaped::<T>().gather(dev.tensor_from_vec(positions, (n,)));
        let types: Matrix<T> =
            self.token_type_embeddings.retaped::<T>().gather(dev.tensor_from_vec(input.token_types.clone(), (n,)));
        self.layer_norm.forward(words + pos + types)
    }
}

#[derive(Clone, Debug)]
pub struct BertSelfAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub num_heads: usize,
}

impl BertSelfAttention {
    /// Multi-head attention over `[batch·seq, hidden]`; `mask` is `[batch, seq]` with 0 for
    /// real keys and a large negative number for padding.
    fn forward<T: Tape<f32, Cpu>>(&self, x: Matrix<T>, mask: &Matrix, batch: usize, seq: usize) -> Matrix<T> {
        let hidden = x.shape().1;
        let (heads, head_dim) = (self.num_heads, hidden / self.num_heads);
        let split = |m: Matrix<T>| {
            m.reshape_like(&(batch, seq, heads, head_dim)).permute::<_, Axes4<0, 2, 1, 3>>()
        };
        let q = split(self.query.forward(x.retaped::<T>()));
        let k = split(self.key.forward(x.retaped::<T>()));
        let v = split(self.value.forward(x));
        let scores = q.matmul(k.permute::<_, Axes4<0, 1, 3, 2>>()) * (1.0 / (head_dim as f32).sqrt());
        let scores = scores + mask.clone().broadcast_like::<_, Axes2<1, 2>>(&(batch, heads, seq, seq));
        let context = scores.softmax::<Axis<3>>().matmul(v);
        context.permute::<_, Axes4<0, 2, 1, 3>>().reshape_like(&(batch * seq, hidden))
    }
}

/// A dense layer followed by residual + LayerNorm (HF's `BertSelfOutput` and `BertOutput`).
#[derive(Clone, Debug)]
pub struct BertResidualOutput {
    pub dense: Linear,
    pub layer_norm: LayerNorm,
}

impl BertResidualOutput {
    fn load(w: &Weights, prefix: &str, inputs: usize, c: &BertConfig) -> Result<Self> {
        Ok(BertResidualOutput {
            dense: w.linear(&format!("{prefix}.dense"), inputs, c.hidden_size)?,
            layer_norm: w.layer_norm(&format!("{prefix}.LayerNorm"), c.hidden_size, c.layer_norm_eps)?,
        })
    }

    fn forward<T: Tape<f32, Cpu> + Merge<R>, R: Tape<f32, Cpu>>(&self, x: Matrix<T>, residual: Matrix<R>) -> Matrix<T> {
        self.layer_norm.forward(self.dense.forward(x) + residual)
    }
}

#[derive(Clone, Debug)]
pub struct BertLayer {
    /// `attention.self`
    pub attention_self: BertSelfAttention,
    /// `attention.output`
    pub attention_output: BertResidualOutput,
    /// `intermediate.dense`
    pub intermediate: Linear,
    /// `output`
    pub output: BertResidualOutput,
}

impl BertLayer {
    fn load(w: &Weights, prefix: &str, c: &BertConfig) -> Result<Self> {
        let h = c.hidden_size;
        Ok(BertLayer {
            attention_self: BertSelfAttention {
                query: w.linear(&format!("{prefix}.attention.self.query"), h, h)?,
                key: w.linear(&format!("{prefix}.attention.self.key"), h, h)?,
                value: w.linear(&format!("{prefix}.attention.self.value"), h, h)?,
                num_heads: c.num_attention_heads,
            },
            attention_output: BertResidualOutput::load(w, &format!("{prefix}.attention.output"), h, c)?,
            intermediate: w.linear(&format!("{prefix}.intermediate.dense"), h, c.intermediate_size)?,
            output: BertResidualOutput::load(w, &format!("{prefix}.output"), c.intermediate_size, c)?,
        })
    }

    fn forward<T: Tape<f32, Cpu>>(&self, x: Matrix<T>, mask: &Matrix, batch: usize, seq: usize) -> Matrix<T> {
        let attended = self.attention_self.forward(x.retaped::<T>(), mask, batch, seq);
        let x = self.attention_output.forward(attended, x);
        let inner = self.intermediate.forward(x.retaped::<T>()).accurate_gelu();
        self.output.forward(inner, x)
    }
}

#[derive(Clone, Debug)]
pub struct BertModel {
    pub config: BertConfig,
    pub embeddings: BertEmbeddings,
    /// `encoder.layer.N`
    pub encoder_layers: Vec<BertLayer>,
    /// `pooler.dense`, if the checkpoint has one.
    pub pooler: Option<Linear>,
}

impl BertModel {
    /// Loads an HF model dir (`config.json` + `model.safetensors`).
    pub fn load(dir: &Path, dev: &Cpu) -> Result<BertModel> {
        let config = BertConfig::load(&dir.join("config.json"))?;
        let path = dir.join("model.safetensors");
        let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read the weights", path.display()))?;
        let w = Weights::new(&path, &bytes, dev)?;
        // Checkpoints saved from a task model carry a `bert.` prefix.
        let root = if w.has("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        Self::from_weights(&w, root, config)
    }

    pub fn from_weights(w: &Weights, root: &str, config: BertConfig) -> Result<BertModel> {
        let embeddings = BertEmbeddings::load(w, &format!("{root}embeddings"), &config)?;
        let encoder_layers = (0..config.num_hidden_layers)
            .map(|i| BertLayer::load(w, &format!("{root}encoder.layer.{i}"), &config))
            .collect::<Result<Vec<_>>>()?;
        let pooler_name = format!("{root}pooler.dense");
        let pooler = if w.has(&format!("{pooler_name}.weight")) {
            Some(w.linear(&pooler_name, config.hidden_size, config.hidden_size)?)
        } else {
            None
        };
        Ok(BertModel { config, embeddings, encoder_layers, pooler })
    }

    /// The additive attention mask `[batch, seq]`: 0 on real tokens, -1e9 on padding.
    fn mask(&self, input: &BertInput) -> Matrix {
        let mut m = vec![0f32; input.batch() * input.seq];
        for (b, &len) in input.lengths.iter().enumerate() {
            m[b * input.seq + len..(b + 1) * input.seq].fill(-1e9);
        }
        self.embeddings.word_embeddings.device().tensor_from_vec(m, (input.batch(), input.seq))
    }

    /// Last hidden state `[batch·seq, hidden]`; the tape starts at `word_embeddings`.
    pub fn forward<T: Tape<f32, Cpu>>(&self, word_embeddings: Matrix<T>, input: &BertInput) -> Matrix<T> {
        let mask = self.mask(input);
        let mut x = self.embeddings.forward(word_embeddings, input);
        for layer in &self.encoder_layers {
            x = layer.forward(x, &mask, input.batch(), input.seq);
        }
        x
    }

    /// Last hidden state without a tape.
    pub fn last_hidden_state(&self, input: &BertInput) -> Vec<f32> {
        self.forward(self.embeddings.word_embeddings.clone(), input).as_vec()
    }
}

impl BertModel {
    /// Parameters with their HF names under `prefix` (`""` or `"bert."`).
    pub fn params_mut<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, ParamMut<'a>)>) {
        let e = &mut self.embeddings;
        out.push((format!("{prefix}embeddings.word_embeddings.weight"), ParamMut::Matrix(&mut e.word_embeddings)));
        out.push((format!("{prefix}embeddings.position_embeddings.weight"), ParamMut::Matrix(&mut e.position_embeddings)));
        out.push((format!("{prefix}embeddings.token_type_embeddings.weight"), ParamMut::Matrix(&mut e.token_type_embeddings)));
        e.layer_norm.params_mut(&format!("{prefix}embeddings.LayerNorm"), out);
        for (i, layer) in self.encoder_layers.iter_mut().enumerate() {
            let p = format!("{prefix}encoder.layer.{i}");
            layer.attention_self.query.params_mut(&format!("{p}.attention.self.query"), out);
            layer.attention_self.key.params_mut(&format!("{p}.attention.self.key"), out);
            layer.attention_self.value.params_mut(&format!("{p}.attention.self.value"), out);
            layer.attention_output.dense.params_mut(&format!("{p}.attention.output.dense"), out);
            layer.attention_output.layer_norm.params_mut(&format!("{p}.attention.output.LayerNorm"), out);
            layer.intermediate.params_mut(&format!("{p}.intermediate.dense"), out);
            layer.output.dense.params_mut(&format!("{p}.output.dense"), out);
            layer.output.layer_norm.params_mut(&format!("{p}.output.LayerNorm"), out);
        }
        if let Some(pooler) = self.pooler.as_mut() {
            pooler.params_mut(&format!("{prefix}pooler.dense"), out);
        }
    }
}
