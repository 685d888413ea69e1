//! BERT inference on the GPU, for the teacher's logits on the transfer set: the same
//! arithmetic as `models::bert` (`BertModel::last_hidden_state`, then pooler and
//! classifier), with cuBLAS GEMMs and `kernels/bert.cu` for the rest. The structs mirror the
//! CPU ones, so a batch is followed top to bottom the same way: ids → embedding sum →
//! LayerNorm → N × (Q, K, V → per-head scores → masked softmax → context → dense + residual +
//! LayerNorm → GELU feed-forward + residual + LayerNorm) → tanh(pooler([CLS])) → classifier.

use anyhow::{Context, Result};
use dfdx::prelude::HasShape;
use cudarc::driver::CudaSlice;

use super::Gpu;
use crate::launch;
use crate::models::bert::{BertForSequenceClassification, BertInput};
use crate::models::layers::{contiguous_values, LayerNorm, Linear};

struct GpuLinear {
    /// `[out, in]`, as PyTorch stores it.
    weight: CudaSlice<f32>,
    bias: CudaSlice<f32>,
    inputs: usize,
    outputs: usize,
}

struct GpuLayerNorm {
    weight: CudaSlice<f32>,
    bias: CudaSlice<f32>,
    eps: f32,
}

struct GpuLayer {
    query: GpuLinear,
    key: GpuLinear,
    value: GpuLinear,
    attention_output: (GpuLinear, GpuLayerNorm),
    intermediate: GpuLinear,
    output: (GpuLinear, GpuLayerNorm),
}

pub struct GpuBert {
    gpu: Gpu,
    hidden: usize,
    heads: usize,
    word_embeddings: CudaSlice<f32>,
    position_embeddings: CudaSlice<f32>,
    token_type_embeddings: CudaSlice<f32>,
    embeddings_layer_norm: GpuLayerNorm,
    layers: Vec<GpuLayer>,
    pooler: GpuLinear,
    classifier: GpuLinear,
}

impl GpuBert {
    /// Copies a loaded teacher to the GPU.
    pub fn new(gpu: Gpu, model: &BertForSequenceClassification) -> Result<GpuBert> {
        let linear = |l: &Linear| -> Result<GpuLinear> {
            let (outputs, inputs) = *l.weight.shape();
            Ok(GpuLinear { weight: gpu.upload(&contiguous_values(&l.weight))?, bias: gpu.upload(&l.bias.as_vec())?, inputs, outputs })
        };
        let layer_norm = |n: &LayerNorm| -> Result<GpuLayerNorm> {
            Ok(GpuLayerNorm { weight: gpu.upload(&n.weight.as_vec())?, bias: gpu.upload(&n.bias.as_vec())?, eps: n.eps as f32 })
        };
        let bert = &model.bert;
        let e = &bert.embeddings;
        let layers = bert
            .encoder_layers
            .iter()
            .map(|l| {
                Ok(GpuLayer {
                    query: linear(&l.attention_self.query)?,
                    key: linear(&l.attention_self.key)?,
                    value: linear(&l.attention_self.value)?,
                    attention_output: (linear(&l.attention_output.dense)?, layer_norm(&l.attention_output.layer_norm)?),
                    intermediate: linear(&l.intermediate)?,
                    output: (linear(&l.output.dense)?, layer_norm(&l.output.layer_norm)?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(GpuBert {
            hidden: bert.config.hidden_size,
            heads: bert.config.num_attention_heads,
            word_embeddings: gpu.upload(&contiguous_values(&e.word_embeddings))?,
            position_embeddings: gpu.upload(&contiguous_values(&e.position_embeddings))?,
            token_type_embeddings: gpu.upload(&contiguous_values(&e.token_type_embeddings))?,
            embeddings_layer_norm: layer_norm(&e.layer_norm)?,
            layers,
            pooler: linear(bert.pooler.as_ref().context("the teacher has no pooler")?)?,
            classifier: linear(&model.classifier)?,
            gpu,
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    pub fn num_labels(&self) -> usize {
        self.classifier.outputs
    }

    /// Logits `[batch, num_labels]`, row-major, as `BertForSequenceClassification::predict_logits`.
    pub fn predict_logits(&self, input: &BertInput) -> Result<Vec<f32>> {
        let gpu = &self.gpu;
        let (batch, seq, h) = (input.batch(), input.seq, self.hidden);
        let rows = batch * seq;
        let ids: Vec<i32> = input.ids.iter().map(|&i| i as i32).collect();
        let types: Vec<i32> = input.token_types.iter().map(|&i| i as i32).collect();
        let (ids, types, mask) = (gpu.upload(&ids)?, gpu.upload(&types)?, gpu.upload(&input.additive_mask())?);

        let mut summed = gpu.zeros(rows * h)?;
        launch!(gpu, "embeddings_sum", rows * h;
            &self.word_embeddings, &self.position_embeddings, &self.token_type_embeddings, &ids, &types, &mut summed,
            &(rows as i32), &(seq as i32), &(h as i32))?;
        let mut x = self.layer_norm(&summed, None, &self.embeddings_layer_norm, rows)?;
        for layer in &self.layers {
            x = self.layer(layer, &x, &mask, batch, seq)?;
        }
        let mut cls = gpu.zeros(batch * h)?;
        launch!(gpu, "cls_rows", batch * h; &x, &mut cls, &(batch as i32), &(seq as i32), &(h as i32))?;
        let mut pooled = self.linear(&self.pooler, &cls, batch)?;
        launch!(gpu, "tanh_forward", batch * h; &mut pooled, &((batch * h) as i32))?;
        let logits = self.linear(&self.classifier, &pooled, batch)?;
        gpu.download(&logits)
    }

    fn layer(&self, layer: &GpuLayer, x: &CudaSlice<f32>, mask: &CudaSlice<f32>, batch: usize, seq: usize) -> Result<CudaSlice<f32>> {
        let gpu = &self.gpu;
        let (h, heads) = (self.hidden, self.heads);
        let dim = h / heads;
        let rows = batch * seq;
        let split = |m: &CudaSlice<f32>| -> Result<CudaSlice<f32>> {
            let mut out = gpu.zeros(rows * h)?;
            launch!(gpu, "split_heads", rows * h; m, &mut out, &(batch as i32), &(seq as i32), &(heads as i32), &(dim as i32))?;
            Ok(out)
        };
        let q = split(&self.linear(&layer.query, x, rows)?)?;
        let k = split(&self.linear(&layer.key, x, rows)?)?;
        let v = split(&self.linear(&layer.value, x, rows)?)?;
        // Scores per (example, head): q·kᵀ, then softmax(scores/√d + mask) in place.
        let groups = batch * heads;
        let mut scores = gpu.zeros(groups * seq * seq)?;
        gpu.matmul_batched(&mut scores, &q, false, &k, true, (seq, seq, dim), groups, (seq * dim, seq * dim, seq * seq))?;
        let scale = 1.0 / (dim as f32).sqrt();
        launch!(gpu, "masked_softmax", groups * seq * 32; &mut scores, mask, &(batch as i32), &(heads as i32), &(seq as i32), &scale)?;
        let mut context = gpu.zeros(rows * h)?;
        gpu.matmul_batched(&mut context, &scores, false, &v, false, (seq, dim, seq), groups, (seq * seq, seq * dim, seq * dim))?;
        let mut merged = gpu.zeros(rows * h)?;
        launch!(gpu, "merge_heads", rows * h; &context, &mut merged, &(batch as i32), &(seq as i32), &(heads as i32), &(dim as i32))?;

        let (dense, norm) = &layer.attention_output;
        let x = self.layer_norm(&self.linear(dense, &merged, rows)?, Some(x), norm, rows)?;
        let mut inner = self.linear(&layer.intermediate, &x, rows)?;
        let n = inner.len();
        launch!(gpu, "gelu", n; &mut inner, &(n as i32))?;
        let (dense, norm) = &layer.output;
        self.layer_norm(&self.linear(dense, &inner, rows)?, Some(&x), norm, rows)
    }

    /// `input·weightᵀ + bias`, `[rows, in]` → `[rows, out]`.
    fn linear(&self, l: &GpuLinear, input: &CudaSlice<f32>, rows: usize) -> Result<CudaSlice<f32>> {
        let gpu = &self.gpu;
        let mut out = gpu.zeros(rows * l.outputs)?;
        launch!(gpu, "fill_rows", rows * l.outputs; &mut out, &l.bias, &(rows as i32), &(l.outputs as i32))?;
        gpu.matmul(&mut out, input, false, &l.weight, true, (rows, l.outputs, l.inputs), 1.0)?;
        Ok(out)
    }

    /// `LayerNorm(x + residual)`.
    fn layer_norm(&self, x: &CudaSlice<f32>, residual: Option<&CudaSlice<f32>>, norm: &GpuLayerNorm, rows: usize) -> Result<CudaSlice<f32>> {
        let gpu = &self.gpu;
        let h = self.hidden;
        let mut out = gpu.zeros(rows * h)?;
        match residual {
            Some(r) => launch!(gpu, "layer_norm", @rows rows; x, r, &norm.weight, &norm.bias, &mut out, &(rows as i32), &(h as i32), &norm.eps)?,
            // A null pointer: the kernel then adds nothing.
            None => launch!(gpu, "layer_norm", @rows rows; x, &0u64, &norm.weight, &norm.bias, &mut out, &(rows as i32), &(h as i32), &norm.eps)?,
        }
        Ok(out)
    }
}
