//! BERT in dfdx, any size from an HF `config.json`.
//!
//! The structs mirror Hugging Face's module tree (`embeddings`, `encoder.layer.N.attention.
//! self.query`, …), so loading a checkpoint is one name prefix per struct. A batch goes:
//! token ids → word + position + token-type embeddings → LayerNorm → N × (masked multi-head
//! self-attention → residual + LayerNorm → GELU feed-forward → residual + LayerNorm) →
//! last hidden state; the pooler is tanh(dense([CLS])).
//!
//! Activations are kept 2-D (`[batch·seq, hidden]`); the heavy steps (Linear, attention,
//! LayerNorm with its residual, GELU) are fused tape nodes from `layers.rs` and `attention.rs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dfdx::prelude::*;
use rand::rngs::StdRng;
use serde::Deserialize;

use crate::ops::attention::{attention, AttentionShape};
use crate::ops::dropout::{dropout, DropoutRng};
use super::bert_inference::BertInference;
use super::layers::{f32_values, gelu, safetensors_bytes, LayerNorm, Linear, ParamMut};
use crate::ops::packed::Precision;
use crate::ops::Matrix;
use crate::files::write_dir_atomic;

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
    /// Parameters of the encoder this config describes (u128: a corrupt config cannot overflow).
    pub fn parameter_count(&self, with_pooler: bool) -> u128 {
        let (h, inner) = (self.hidden_size as u128, self.intermediate_size as u128);
        let embeddings = (self.vocab_size as u128 + self.max_position_embeddings as u128 + self.type_vocab_size as u128) * h + 2 * h;
        let layer = 4 * (h * h + h) + 2 * h + (h * inner + inner) + (inner * h + h) + 2 * h;
        embeddings + self.num_hidden_layers as u128 * layer + if with_pooler { h * h + h } else { 0 }
    }

    pub fn load(path: &Path) -> Result<BertConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let config: BertConfig =
            serde_json::from_str(&text).with_context(|| format!("{}: not a BERT config.json", path.display()))?;
        if config.hidden_size == 0 || config.num_attention_heads == 0 || config.num_hidden_layers == 0 {
            bail!("{}: hidden_size, num_attention_heads and num_hidden_layers must be at least 1", path.display());
        }
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
        Ok(f32_values(view.data()))
    }

    /// Fills every parameter of `params` from the tensor of the same name (shapes checked).
    pub fn fill(&self, params: Vec<(String, ParamMut<'_>)>) -> Result<()> {
        for (name, mut param) in params {
            param.set_values(&self.values(&name, &param.dims())?);
        }
        Ok(())
    }

    /// Whether the checkpoint names a tensor (for optional parts such as the pooler).
    pub fn has(&self, name: &str) -> bool {
        self.tensors.tensor(name).is_ok()
    }
}

/// Dropout rates during fine-tuning (zero at inference).
#[derive(Debug, Clone, Copy)]
pub struct Dropout<'a> {
    /// After the embeddings, each sublayer and the pooler (`hidden_dropout_prob`).
    pub hidden: f32,
    /// On the attention probabilities (`attention_probs_dropout_prob`).
    pub attention: f32,
    /// Where the masks come from (the trainer's stream, saved in its checkpoints).
    pub rng: Option<&'a DropoutRng>,
}

impl Dropout<'static> {
    pub const NONE: Dropout<'static> = Dropout { hidden: 0.0, attention: 0.0, rng: None };
}

impl<'a> Dropout<'a> {
    pub fn from_config(c: &BertConfig, rng: &'a DropoutRng) -> Dropout<'a> {
        Dropout { hidden: c.hidden_dropout_prob as f32, attention: c.attention_probs_dropout_prob as f32, rng: Some(rng) }
    }

    /// `x` with the hidden-state dropout applied.
    fn on_hidden<T: Tape<f32, Cpu>>(&self, x: Matrix<T>) -> Matrix<T> {
        match self.rng {
            Some(rng) if self.hidden > 0.0 => dropout(x, self.hidden, rng),
            _ => x,
        }
    }

    /// The attention-probability dropout, if any.
    fn on_attention(&self) -> Option<(f32, &'a DropoutRng)> {
        self.rng.filter(|_| self.attention > 0.0).map(|rng| (self.attention, rng))
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

    /// The additive attention mask `[batch, seq]`: 0 on real tokens, -1e9 on padding.
    pub fn additive_mask(&self) -> Vec<f32> {
        let mut m = vec![0f32; self.batch() * self.seq];
        for (b, &len) in self.lengths.iter().enumerate() {
            m[b * self.seq + len..(b + 1) * self.seq].fill(-1e9);
        }
        m
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
    fn zeros(c: &BertConfig, dev: &Cpu) -> Self {
        BertEmbeddings {
            word_embeddings: dev.zeros_like(&(c.vocab_size, c.hidden_size)),
            position_embeddings: dev.zeros_like(&(c.max_position_embeddings, c.hidden_size)),
            token_type_embeddings: dev.zeros_like(&(c.type_vocab_size, c.hidden_size)),
            layer_norm: LayerNorm::new(dev, c.hidden_size, c.layer_norm_eps),
        }
    }

    fn params_mut<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, ParamMut<'a>)>) {
        out.push((format!("{prefix}.word_embeddings.weight"), ParamMut::Matrix(&mut self.word_embeddings)));
        out.push((format!("{prefix}.position_embeddings.weight"), ParamMut::Matrix(&mut self.position_embeddings)));
        out.push((format!("{prefix}.token_type_embeddings.weight"), ParamMut::Matrix(&mut self.token_type_embeddings)));
        self.layer_norm.params_mut(&format!("{prefix}.LayerNorm"), out);
    }

    /// `[batch·seq, hidden]` from `word_embeddings` (which carries the tape).
    fn forward<T: Tape<f32, Cpu>>(&self, word_embeddings: Matrix<T>, input: &BertInput, dropout: Dropout) -> Matrix<T> {
        let dev = word_embeddings.device().clone();
        let n = input.ids.len();
        let positions: Vec<usize> = (0..n).map(|i| i % input.seq).collect();
        let words: Matrix<T> = word_embeddings.gather(dev.tensor_from_vec(input.ids.clone(), (n,)));
        let pos: Matrix<T> = self.position_embeddings.retaped::<T>().gather(dev.tensor_from_vec(positions, (n,)));
        let types: Matrix<T> =
            self.token_type_embeddings.retaped::<T>().gather(dev.tensor_from_vec(input.token_types.clone(), (n,)));
        dropout.on_hidden(self.layer_norm.forward(words + pos + types))
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
    fn params_mut<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, ParamMut<'a>)>) {
        self.query.params_mut(&format!("{prefix}.query"), out);
        self.key.params_mut(&format!("{prefix}.key"), out);
        self.value.params_mut(&format!("{prefix}.value"), out);
    }

    /// Multi-head attention over `[batch·seq, hidden]`; `mask` is `[batch, seq]` with 0 for
    /// real keys and a large negative number for padding.
    fn forward<T: Tape<f32, Cpu>>(&self, x: Matrix<T>, mask: &[f32], shape: (usize, usize), dropout: Dropout) -> Matrix<T> {
        let (batch, seq) = shape;
        let hidden = x.shape().1;
        let q = self.query.forward(x.retaped::<T>());
        let k = self.key.forward(x.retaped::<T>());
        let v = self.value.forward(x);
        let shape = AttentionShape { batch, seq, heads: self.num_heads, head_dim: hidden / self.num_heads };
        attention(q, k, v, mask, shape, dropout.on_attention())
    }
}

/// A dense layer followed by residual + LayerNorm (HF's `BertSelfOutput` and `BertOutput`).
#[derive(Clone, Debug)]
pub struct BertResidualOutput {
    pub dense: Linear,
    pub layer_norm: LayerNorm,
}

impl BertResidualOutput {
    fn zeros(inputs: usize, c: &BertConfig, dev: &Cpu) -> Self {
        BertResidualOutput { dense: Linear::zeros(dev, inputs, c.hidden_size), layer_norm: LayerNorm::new(dev, c.hidden_size, c.layer_norm_eps) }
    }

    fn params_mut<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, ParamMut<'a>)>) {
        self.dense.params_mut(&format!("{prefix}.dense"), out);
        self.layer_norm.params_mut(&format!("{prefix}.LayerNorm"), out);
    }

    fn forward<T: Tape<f32, Cpu> + Merge<R>, R: Tape<f32, Cpu>>(
        &self,
        x: Matrix<T>,
        residual: Matrix<R>,
        dropout: Dropout,
    ) -> Matrix<T> {
        self.layer_norm.forward_sum(dropout.on_hidden(self.dense.forward(x)), residual)
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
    fn zeros(c: &BertConfig, dev: &Cpu) -> Self {
        let h = c.hidden_size;
        BertLayer {
            attention_self: BertSelfAttention {
                query: Linear::zeros(dev, h, h),
                key: Linear::zeros(dev, h, h),
                value: Linear::zeros(dev, h, h),
                num_heads: c.num_attention_heads,
            },
            attention_output: BertResidualOutput::zeros(h, c, dev),
            intermediate: Linear::zeros(dev, h, c.intermediate_size),
            output: BertResidualOutput::zeros(c.intermediate_size, c, dev),
        }
    }

    fn params_mut<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, ParamMut<'a>)>) {
        self.attention_self.params_mut(&format!("{prefix}.attention.self"), out);
        self.attention_output.params_mut(&format!("{prefix}.attention.output"), out);
        self.intermediate.params_mut(&format!("{prefix}.intermediate.dense"), out);
        self.output.params_mut(&format!("{prefix}.output"), out);
    }

    fn forward<T: Tape<f32, Cpu>>(&self, x: Matrix<T>, mask: &[f32], shape: (usize, usize), dropout: Dropout) -> Matrix<T> {
        let attended = self.attention_self.forward(x.retaped::<T>(), mask, shape, dropout);
        let x = self.attention_output.forward(attended, x, dropout);
        let inner = gelu(self.intermediate.forward(x.retaped::<T>()));
        self.output.forward(inner, x, dropout)
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

    /// The model `w` holds under `root` (`""` or `"bert."`): built to the config's shapes,
    /// then every parameter filled by its name from [`BertModel::params_mut`].
    pub fn from_weights(w: &Weights, root: &str, config: BertConfig) -> Result<BertModel> {
        let with_pooler = w.has(&format!("{root}pooler.dense.weight"));
        // Checked before anything is allocated, so a corrupt config.json cannot ask for far more
        // memory than the checkpoint holds (a smaller mismatch is named tensor by tensor below).
        let implied = config.parameter_count(with_pooler);
        let held: u128 = w.tensors.tensors().iter().map(|(_, t)| t.data().len() as u128 / 4).sum();
        if implied > 2 * held + (1 << 20) {
            bail!(
                "{}: config.json implies {implied} parameters but the file holds {held} values; the two do not belong together",
                w.path.display()
            );
        }
        let mut model = BertModel::zeros(config, with_pooler, &w.dev);
        let mut params = Vec::new();
        model.params_mut(root, &mut params);
        w.fill(params)?;
        Ok(model)
    }

    /// A model of `config`'s shapes with zero weights (LayerNorm: ones and zeros).
    pub fn zeros(config: BertConfig, with_pooler: bool, dev: &Cpu) -> BertModel {
        let h = config.hidden_size;
        BertModel {
            embeddings: BertEmbeddings::zeros(&config, dev),
            encoder_layers: (0..config.num_hidden_layers).map(|_| BertLayer::zeros(&config, dev)).collect(),
            pooler: with_pooler.then(|| Linear::zeros(dev, h, h)),
            config,
        }
    }

    /// Writes an HF BERT dir (`config.json`, `model.safetensors` with a pooler) of `config`'s
    /// shapes with random weights: matrices normal with std 0.02, biases 0, LayerNorm 1 and 0.
    /// For benchmarks, GPU checks and tests, where the values do not matter.
    pub fn write_random(dir: &Path, config: &serde_json::Value, seed: u64) -> Result<()> {
        let mut model = BertModel::zeros(serde_json::from_value::<BertConfig>(config.clone())?, true, &Cpu::default());
        let mut rng = <StdRng as rand::SeedableRng>::seed_from_u64(seed);
        let normal = rand_distr::Normal::new(0f32, 0.02).expect("valid std");
        let mut params = Vec::new();
        model.params_mut("", &mut params);
        for (_, param) in params.iter_mut().filter(|(_, p)| p.dims().len() == 2) {
            let values: Vec<f32> = (0..param.dims().iter().product()).map(|_| rand_distr::Distribution::sample(&normal, &mut rng)).collect();
            param.set_values(&values);
        }
        let bytes = safetensors_bytes(&params, HashMap::new())?;
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(config)?)?;
        std::fs::write(dir.join("model.safetensors"), bytes)?;
        Ok(())
    }

    /// Last hidden state `[batch·seq, hidden]`; the tape starts at `word_embeddings`.
    pub fn forward<T: Tape<f32, Cpu>>(&self, word_embeddings: Matrix<T>, input: &BertInput, dropout: Dropout) -> Matrix<T> {
        let mask = input.additive_mask();
        let mut x = self.embeddings.forward(word_embeddings, input, dropout);
        for layer in &self.encoder_layers {
            x = layer.forward(x, &mask, (input.batch(), input.seq), dropout);
        }
        x
    }

    /// Last hidden state `[batch·seq, hidden]` for inference (padding rows are zero): the
    /// same arithmetic as [`BertModel::forward`] in FP32, on plain buffers (see `bert_inference`).
    pub fn last_hidden_state(&self, input: &BertInput) -> Vec<f32> {
        BertInference::encoder(self, Precision::F32).last_hidden_state(input)
    }

    /// The pooler output `tanh(dense(h_[CLS]))` `[batch, hidden]` from the last hidden state.
    fn pool<T: Tape<f32, Cpu>>(&self, hidden: Matrix<T>, input: &BertInput) -> Result<Matrix<T>> {
        let pooler = self.pooler.as_ref().context("the checkpoint has no pooler.dense")?;
        let cls_rows: Vec<usize> = (0..input.batch()).map(|b| b * input.seq).collect();
        let dev = hidden.device().clone();
        let cls: Matrix<T> = hidden.gather(dev.tensor_from_vec(cls_rows, (input.batch(),)));
        Ok(pooler.forward(cls).tanh())
    }
}

impl BertModel {
    /// Parameters with their HF names under `prefix` (`""` or `"bert."`): the one list of
    /// names that loading, saving and the optimizer go by.
    pub fn params_mut<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, ParamMut<'a>)>) {
        self.embeddings.params_mut(&format!("{prefix}embeddings"), out);
        for (i, layer) in self.encoder_layers.iter_mut().enumerate() {
            layer.params_mut(&format!("{prefix}encoder.layer.{i}"), out);
        }
        if let Some(pooler) = self.pooler.as_mut() {
            pooler.params_mut(&format!("{prefix}pooler.dense"), out);
        }
    }
}

/// BERT with HF's `BertForSequenceClassification` head: dropout and `classifier` on the
/// pooler output. Saved as an HF model dir that `transformers` loads unchanged.
#[derive(Clone, Debug)]
pub struct BertForSequenceClassification {
    /// `bert.*`
    pub bert: BertModel,
    /// `classifier.*`
    pub classifier: Linear,
    /// `config.json` as read; written back with the labels when saving.
    pub raw_config: serde_json::Value,
    /// The dir the weights came from (its tokenizer files are copied when saving).
    pub source_dir: PathBuf,
}

impl BertForSequenceClassification {
    /// Loads an HF model dir. A plain encoder checkpoint (no `classifier`, or no pooler) gets
    /// the missing parts from HF's init: normal(0, initializer_range) weights, zero bias.
    pub fn load(dir: &Path, num_labels: usize, dev: &Cpu, rng: &mut StdRng) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config = BertConfig::load(&config_path)?;
        let raw_config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path)?)?;
        let path = dir.join("model.safetensors");
        let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read the weights", path.display()))?;
        let w = Weights::new(&path, &bytes, dev)?;
        let root = if w.has("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        let mut bert = BertModel::from_weights(&w, root, config)?;
        let h = bert.config.hidden_size;
        let std = raw_config.get("initializer_range").and_then(|v| v.as_f64()).unwrap_or(0.02) as f32;
        let mut init = |outputs: usize, inputs: usize| Linear {
            weight: normal(dev, (outputs, inputs), std, rng),
            bias: dev.zeros_like(&(outputs,)),
        };
        if bert.pooler.is_none() {
            bert.pooler = Some(init(h, h));
        }
        let classifier = if w.has("classifier.weight") {
            let shape = w.tensors.tensor("classifier.weight").map(|t| t.shape().to_vec()).unwrap_or_default();
            if shape != [num_labels, h] {
                bail!(
                    "{}: classifier.weight has shape {shape:?} but the task has {num_labels} labels (expected [{num_labels}, {h}]); \
                     start from the encoder checkpoint instead",
                    path.display()
                );
            }
            let mut classifier = Linear::zeros(dev, h, num_labels);
            let mut params = Vec::new();
            classifier.params_mut("classifier", &mut params);
            w.fill(params)?;
            classifier
        } else {
            init(num_labels, h)
        };
        Ok(BertForSequenceClassification { bert, classifier, raw_config, source_dir: dir.to_path_buf() })
    }

    pub fn num_labels(&self) -> usize {
        self.classifier.weight.shape().0
    }

    /// Logits `[batch, num_labels]`; the tape starts at `word_embeddings`.
    pub fn forward<T: Tape<f32, Cpu>>(&self, word_embeddings: Matrix<T>, input: &BertInput, dropout: Dropout) -> Matrix<T> {
        let hidden = self.bert.forward(word_embeddings, input, dropout);
        let pooled = self.bert.pool(hidden, input).expect("load() always sets a pooler");
        self.classifier.forward(dropout.on_hidden(pooled))
    }

    /// Logits with the config's dropout (masks drawn from `dropout_rng`) and a gradient tape.
    pub fn forward_train(&self, input: &BertInput, dropout_rng: &DropoutRng) -> Matrix<OwnedTape<f32, Cpu>> {
        let dropout = Dropout::from_config(&self.bert.config, dropout_rng);
        self.forward(self.bert.embeddings.word_embeddings.leaky_trace(), input, dropout)
    }

    /// Logits without dropout or tape, row-major `[batch, num_labels]`, in FP32. To run many
    /// batches, build a [`BertInference`] once instead (this packs the weights on every call).
    pub fn predict_logits(&self, input: &BertInput) -> Vec<f32> {
        BertInference::new(self, Precision::F32).logits(input)
    }

    /// Parameters with their HF names (`bert.…`, `classifier.…`).
    pub fn params_mut(&mut self) -> Vec<(String, ParamMut<'_>)> {
        let mut out = Vec::new();
        self.bert.params_mut("bert.", &mut out);
        self.classifier.params_mut("classifier", &mut out);
        out
    }

    pub fn num_params(&mut self) -> usize {
        self.params_mut().iter().map(|(_, p)| p.dims().iter().product::<usize>()).sum()
    }

    /// Writes an HF model dir: `config.json` (architecture and labels), `model.safetensors`,
    /// and the tokenizer files of the source dir. The dir is built under a temporary name
    /// and renamed into place.
    pub fn save(&mut self, dir: &Path, labels: &[String]) -> Result<()> {
        let mut config = self.raw_config.clone();
        let object = config.as_object_mut().context("config.json is not a JSON object")?;
        object.insert("architectures".into(), serde_json::json!(["BertForSequenceClassification"]));
        let id2label: serde_json::Map<String, serde_json::Value> =
            labels.iter().enumerate().map(|(i, l)| (i.to_string(), l.clone().into())).collect();
        let label2id: serde_json::Map<String, serde_json::Value> =
            labels.iter().enumerate().map(|(i, l)| (l.clone(), i.into())).collect();
        object.insert("id2label".into(), id2label.into());
        object.insert("label2id".into(), label2id.into());
        object.remove("_name_or_path");
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        let weights = safetensors_bytes(&self.params_mut(), metadata)?;
        let source_dir = self.source_dir.clone();
        write_dir_atomic(dir, |tmp| {
            std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(&config)?)?;
            std::fs::write(tmp.join("model.safetensors"), &weights)?;
            for file in ["tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"] {
                let src = source_dir.join(file);
                if src.is_file() {
                    std::fs::copy(&src, tmp.join(file)).with_context(|| format!("{}: cannot copy", src.display()))?;
                }
            }
            Ok(())
        })?;
        self.source_dir = dir.to_path_buf();
        Ok(())
    }
}

fn normal<S: Shape>(dev: &Cpu, shape: S, std: f32, rng: &mut StdRng) -> Tensor<S, f32, Cpu> {
    let dist = rand_distr::Normal::new(0.0, std).expect("positive std");
    let values: Vec<f32> = (0..shape.num_elements()).map(|_| rand_distr::Distribution::sample(&dist, rng)).collect();
    dev.tensor_from_vec(values, shape)
}
