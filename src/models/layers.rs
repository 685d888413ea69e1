//! Building blocks shared by the models: `Linear` and `LayerNorm` over runtime-shaped
//! dfdx tensors, with PyTorch's layouts and initialisation.

use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::Rng;

use crate::ops::{Matrix, Vector};
use crate::ops::matmul::{matmul, MatRef};
use crate::ops::simd::{dispatch, exp_fast};

/// `y = x · weightᵀ + bias`, with PyTorch's `[out, in]` weight.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Matrix,
    pub bias: Vector,
}

impl Linear {
    /// All zeros (to be filled from a checkpoint).
    pub fn zeros(dev: &Cpu, inputs: usize, outputs: usize) -> Linear {
        Linear { weight: dev.zeros_like(&(outputs, inputs)), bias: dev.zeros_like(&(outputs,)) }
    }

    /// PyTorch's default init: uniform(±1/√in).
    pub fn new(dev: &Cpu, inputs: usize, outputs: usize, rng: &mut StdRng) -> Linear {
        let k = 1.0 / (inputs as f32).sqrt();
        Linear {
            weight: uniform(dev, (outputs, inputs), k, rng),
            bias: uniform(dev, (outputs,), k, rng),
        }
    }

    /// `x · weightᵀ + bias` on plain values (`rows × in` → `rows × out`), for tape-free inference.
    pub fn apply(&self, xs: &[f32], rows: usize) -> Vec<f32> {
        self.apply_with(&contiguous_values(&self.weight), xs, rows)
    }

    /// [`Linear::apply`] with the weight's values already copied out (`forward` keeps them
    /// for its backward, so the weight is copied once per step, not twice).
    fn apply_with(&self, w: &[f32], xs: &[f32], rows: usize) -> Vec<f32> {
        let (outputs, inputs) = *self.weight.shape();
        let mut out = self.bias.as_vec().repeat(rows);
        matmul(&mut out, MatRef::new(xs, rows, inputs), MatRef::new(w, outputs, inputs).t(), true, rayon::current_num_threads());
        out
    }

    /// One tape node with a hand-written backward: the GEMMs go to `gemm` 0.19 (AVX-512 where
    /// the CPU has it, all rayon threads), about twice as fast as dfdx's own matmul here.
    pub fn forward<T: Tape<f32, Cpu>>(&self, x: Matrix<T>) -> Matrix<T> {
        let (rows, inputs) = *x.shape();
        let outputs = self.weight.shape().0;
        assert_eq!(inputs, self.weight.shape().1, "Linear: input width differs from the weight");
        let threads = rayon::current_num_threads();
        let (x, mut tape) = x.split_tape();
        let xs = contiguous_values(&x);
        let w = contiguous_values(&self.weight);
        let out = self.apply_with(&w, &xs, rows);
        let out = x.device().tensor_from_vec(out, (rows, outputs));
        if !T::OWNS_TAPE {
            return out.put_tape(tape);
        }
        let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
        let (weight, bias) = (self.weight.clone(), self.bias.clone());
        tape.add_backward_op(move |grads| {
            let d_out = grads.get_or_alloc_mut(&out_ghost)?.to_vec();
            let d_out_m = MatRef::new(&d_out, rows, outputs);
            matmul(grads.get_or_alloc_mut(&weight)?, d_out_m.t(), MatRef::new(&xs, rows, inputs), true, threads);
            let d_bias = grads.get_or_alloc_mut(&bias)?;
            for row in d_out.chunks_exact(outputs) {
                d_bias.iter_mut().zip(row).for_each(|(d, g)| *d += g);
            }
            matmul(grads.get_or_alloc_mut(&x_ghost)?, d_out_m, MatRef::new(&w, outputs, inputs), true, threads);
            Ok(())
        });
        out.put_tape(tape)
    }
}

pub fn uniform<S: Shape>(dev: &Cpu, shape: S, k: f32, rng: &mut StdRng) -> Tensor<S, f32, Cpu> {
    let values: Vec<f32> = (0..shape.num_elements()).map(|_| rng.gen_range(-k..=k)).collect();
    dev.tensor_from_vec(values, shape)
}

/// The values of a row-major matrix with one memcpy. dfdx's `as_vec` walks the tensor one
/// strided index at a time, which cost 7% of BERT fine-tuning. Only for tensors produced by
/// dfdx ops or `tensor_from_vec` (contiguous); a permuted or broadcast view is caught by the
/// spot checks below (the data length, and the last element of the first row).
pub fn contiguous_values<T>(t: &Tensor<(usize, usize), f32, Cpu, T>) -> Vec<f32> {
    let (rows, cols) = *t.shape();
    let mut out = vec![0f32; rows * cols];
    t.copy_into(&mut out);
    if rows > 1 && cols > 1 {
        // Compared as bits, so that a NaN weight is copied, not taken for a layout error.
        assert_eq!(out[cols - 1].to_bits(), t[[0, cols - 1]].to_bits(), "contiguous_values: the tensor is a strided view");
    }
    out
}

/// `LayerNorm` over the last axis of `[rows, D]`, with an explicit epsilon (BERT uses 1e-12,
/// not dfdx's default 1e-5).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Vector,
    pub bias: Vector,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(dev: &Cpu, dim: usize, eps: f64) -> LayerNorm {
        LayerNorm { weight: dev.ones_like(&(dim,)), bias: dev.zeros_like(&(dim,)), eps }
    }

    /// One tape node, rows in parallel (dfdx's `normalize` chain runs several single-threaded
    /// passes and keeps each intermediate).
    pub fn forward<T: Tape<f32, Cpu>>(&self, x: Matrix<T>) -> Matrix<T> {
        let (x, tape) = x.split_tape();
        let xs = contiguous_values(&x);
        self.forward_values(&x, xs, tape, vec![x.clone()])
    }

    /// `LayerNorm(a + b)` as one node: BERT's residual connections, without a separate add.
    pub fn forward_sum<T: Tape<f32, Cpu> + Merge<R>, R: Tape<f32, Cpu>>(&self, a: Matrix<T>, b: Matrix<R>) -> Matrix<T> {
        assert_eq!(a.shape(), b.shape(), "LayerNorm::forward_sum: shapes differ");
        let (a, tape_a) = a.split_tape();
        let (b, tape_b) = b.split_tape();
        let mut sum = contiguous_values(&a);
        sum.iter_mut().zip(contiguous_values(&b)).for_each(|(s, v)| *s += v);
        let inputs = vec![a.clone(), b];
        self.forward_values(&a, sum, tape_a.merge(tape_b), inputs)
    }

    /// (x̂, 1/σ per row, γ·x̂ + β) of `rows × dim` values, rows in parallel.
    fn normalize(&self, xs: &[f32], dim: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        use rayon::prelude::*;
        let rows = xs.len() / dim;
        let (gamma, beta) = (self.weight.as_vec(), self.bias.as_vec());
        let eps = self.eps as f32;
        let mut normed = vec![0f32; rows * dim];
        let mut inv_std = vec![0f32; rows];
        let mut out = vec![0f32; rows * dim];
        normed
            .par_chunks_mut(dim)
            .zip(out.par_chunks_mut(dim))
            .zip(inv_std.par_iter_mut())
            .zip(xs.par_chunks(dim))
            .for_each(|(((n, o), inv), x)| {
                let mean = x.iter().sum::<f32>() / dim as f32;
                let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
                *inv = 1.0 / (var + eps).sqrt();
                for j in 0..dim {
                    n[j] = (x[j] - mean) * *inv;
                    o[j] = n[j] * gamma[j] + beta[j];
                }
            });
        (normed, inv_std, out)
    }

    /// Normalises `xs` (the values of a `[rows, dim]` input) and records a backward op that
    /// adds the input gradient to each of `inputs` (tensors share storage: cloning is cheap).
    fn forward_values<T: Tape<f32, Cpu>>(
        &self,
        like: &Matrix,
        xs: Vec<f32>,
        mut tape: T,
        inputs: Vec<Matrix>,
    ) -> Matrix<T> {
        use rayon::prelude::*;
        let (rows, dim) = *like.shape();
        let gamma = self.weight.as_vec();
        let (normed, inv_std, out) = self.normalize(&xs, dim);
        let out = like.device().tensor_from_vec(out, (rows, dim));
        if !T::OWNS_TAPE {
            return out.put_tape(tape);
        }
        let out_ghost = out.ghost();
        let (weight, bias) = (self.weight.clone(), self.bias.clone());
        tape.add_backward_op(move |grads| {
            let d_out = grads.get_or_alloc_mut(&out_ghost)?.to_vec();
            let mut d_gamma = vec![0f32; dim];
            let mut d_beta = vec![0f32; dim];
            for (g, n) in d_out.chunks_exact(dim).zip(normed.chunks_exact(dim)) {
                for j in 0..dim {
                    d_gamma[j] += g[j] * n[j];
                    d_beta[j] += g[j];
                }
            }
            grads.get_or_alloc_mut(&weight)?.iter_mut().zip(&d_gamma).for_each(|(a, b)| *a += b);
            grads.get_or_alloc_mut(&bias)?.iter_mut().zip(&d_beta).for_each(|(a, b)| *a += b);
            let mut d_x = vec![0f32; rows * dim];
            d_x.par_chunks_mut(dim)
                .zip(d_out.par_chunks(dim))
                .zip(normed.par_chunks(dim))
                .zip(inv_std.par_iter())
                .for_each(|(((dx, g), n), inv)| {
                    // dx = (g·γ − mean(g·γ) − x̂·mean(g·γ·x̂)) / σ
                    let (mut mean_g, mut mean_gn) = (0f32, 0f32);
                    for j in 0..dim {
                        let gj = g[j] * gamma[j];
                        mean_g += gj;
                        mean_gn += gj * n[j];
                    }
                    mean_g /= dim as f32;
                    mean_gn /= dim as f32;
                    for j in 0..dim {
                        dx[j] = inv * (g[j] * gamma[j] - mean_g - n[j] * mean_gn);
                    }
                });
            for input in &inputs {
                grads.get_or_alloc_mut(input)?.iter_mut().zip(&d_x).for_each(|(a, b)| *a += b);
            }
            Ok(())
        });
        out.put_tape(tape)
    }
}

/// A mutable view of one parameter, for optimizers and checkpoints.
pub enum ParamMut<'a> {
    Matrix(&'a mut Matrix),
    Vector(&'a mut Vector),
    /// A lookup table: its gradient comes as the rows a batch used ([`RowGrads`]), not from
    /// dfdx's gradients.
    Embedding(&'a mut Embedding),
}

impl ParamMut<'_> {
    pub fn dims(&self) -> Vec<usize> {
        match self {
            ParamMut::Matrix(t) => vec![t.shape().0, t.shape().1],
            ParamMut::Vector(t) => vec![t.shape().0],
            ParamMut::Embedding(e) => vec![e.rows, e.dim],
        }
    }

    pub fn values(&self) -> Vec<f32> {
        match self {
            ParamMut::Matrix(t) => t.as_vec(),
            ParamMut::Vector(t) => t.as_vec(),
            ParamMut::Embedding(e) => e.weight.clone(),
        }
    }

    pub fn set_values(&mut self, values: &[f32]) {
        match self {
            ParamMut::Matrix(t) => t.copy_from(values),
            ParamMut::Vector(t) => t.copy_from(values),
            ParamMut::Embedding(e) => e.weight.copy_from_slice(values),
        }
    }

    /// Sets only `rows` of a table from the full `values` (any other parameter: all of it).
    pub fn set_rows(&mut self, values: &[f32], rows: &[usize]) {
        match self {
            ParamMut::Embedding(e) => {
                let dim = e.dim;
                for &r in rows {
                    e.weight[r * dim..(r + 1) * dim].copy_from_slice(&values[r * dim..(r + 1) * dim]);
                }
            }
            _ => self.set_values(values),
        }
    }

    /// This parameter's gradient (zeros if it did not take part in the pass). Not for an
    /// [`Embedding`], whose gradient is its [`RowGrads`].
    pub fn grad<'g>(&self, grads: &'g mut Gradients<f32, Cpu>) -> &'g mut [f32] {
        match self {
            ParamMut::Matrix(t) => grads.get_or_alloc_mut(&**t).expect("cpu alloc"),
            ParamMut::Vector(t) => grads.get_or_alloc_mut(&**t).expect("cpu alloc"),
            ParamMut::Embedding(_) => panic!("an embedding's gradient comes as RowGrads, not from dfdx"),
        }
    }
}

/// A lookup table of rows (the student's word embedding), kept outside dfdx so that a
/// training step reads and writes only the rows its batch uses: as a dfdx tensor it got a
/// dense gradient the size of the whole table and a full copy on every update.
#[derive(Clone, Debug)]
pub struct Embedding {
    /// `[rows, dim]`, row-major.
    pub weight: Vec<f32>,
    pub rows: usize,
    pub dim: usize,
}

impl Embedding {
    pub fn new(weight: Vec<f32>, rows: usize, dim: usize) -> Embedding {
        assert_eq!(weight.len(), rows * dim, "embedding values do not fill {rows} × {dim}");
        Embedding { weight, rows, dim }
    }

    pub fn row(&self, id: usize) -> &[f32] {
        &self.weight[id * self.dim..(id + 1) * self.dim]
    }

    /// The rows of `ids`, stacked: `[ids.len(), dim]`.
    pub fn lookup(&self, ids: &[usize]) -> Vec<f32> {
        let mut out = Vec::with_capacity(ids.len() * self.dim);
        for &id in ids {
            out.extend_from_slice(self.row(id));
        }
        out
    }
}

/// The gradient of an [`Embedding`] over the rows one batch used: `rows` ascending, `grad`
/// `[rows.len(), dim]`; every other row's gradient is zero.
#[derive(Clone, Debug, Default)]
pub struct RowGrads {
    pub rows: Vec<usize>,
    pub grad: Vec<f32>,
}

impl RowGrads {
    /// Sums the gradient `d_rows` (`[ids.len(), dim]`) of a lookup of `ids` per distinct id,
    /// in the order of `ids` (the order dfdx's gather sums in).
    pub fn from_lookup(ids: &[usize], d_rows: &[f32], dim: usize) -> RowGrads {
        let mut rows = ids.to_vec();
        rows.sort_unstable();
        rows.dedup();
        let mut grad = vec![0f32; rows.len() * dim];
        for (&id, d) in ids.iter().zip(d_rows.chunks_exact(dim)) {
            let k = rows.binary_search(&id).expect("id is among the rows");
            grad[k * dim..(k + 1) * dim].iter_mut().zip(d).for_each(|(g, d)| *g += d);
        }
        RowGrads { rows, grad }
    }

    /// The full `[table_rows, dim]` gradient (zeros outside `rows`).
    pub fn to_dense(&self, table_rows: usize, dim: usize) -> Vec<f32> {
        let mut dense = vec![0f32; table_rows * dim];
        for (&r, g) in self.rows.iter().zip(self.grad.chunks_exact(dim)) {
            dense[r * dim..(r + 1) * dim].copy_from_slice(g);
        }
        dense
    }
}

impl Linear {
    /// Appends `PREFIX.weight` and `PREFIX.bias`.
    pub fn params_mut<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, ParamMut<'a>)>) {
        out.push((format!("{prefix}.weight"), ParamMut::Matrix(&mut self.weight)));
        out.push((format!("{prefix}.bias"), ParamMut::Vector(&mut self.bias)));
    }
}

impl LayerNorm {
    /// Appends `PREFIX.weight` and `PREFIX.bias`.
    pub fn params_mut<'a>(&'a mut self, prefix: &str, out: &mut Vec<(String, ParamMut<'a>)>) {
        out.push((format!("{prefix}.weight"), ParamMut::Vector(&mut self.weight)));
        out.push((format!("{prefix}.bias"), ParamMut::Vector(&mut self.bias)));
    }
}

/// Named parameters as safetensors bytes (F32, little-endian), with header `metadata`. A
/// parameter holding NaN or infinity is an error (naming it): such a checkpoint would predict
/// the same thing for every input.
pub fn safetensors_bytes(
    params: &[(String, ParamMut<'_>)],
    metadata: std::collections::HashMap<String, String>,
) -> anyhow::Result<Vec<u8>> {
    for (name, p) in params {
        if let Some(bad) = p.values().iter().find(|v| !v.is_finite()) {
            anyhow::bail!("parameter {name} holds {bad}: the weights are not finite, so no checkpoint is written");
        }
    }
    let tensors: Vec<NamedTensor> = params
        .iter()
        .map(|(name, p)| {
            (name.clone(), safetensors::Dtype::F32, p.dims(), f32_bytes(&p.values()))
        })
        .collect();
    serialize_tensors(&tensors, Some(metadata))
}

/// F32 values as little-endian bytes, the layout of a safetensors F32 tensor.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Little-endian bytes (a multiple of 4) back to F32 values.
pub fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()
}

/// A tensor to serialise: name, dtype, dims and its little-endian bytes.
pub type NamedTensor = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

/// The metadata key under which [`serialize_tensors`] records the tensors' [`content_hash`],
/// so that a file about to be reused can be checked to be the one written.
pub const CONTENT_HASH_KEY: &str = "distill.sha256";

/// SHA-256 over the tensors' names and bytes in name order (independent of file layout).
pub fn content_hash<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<(&str, &[u8])> = tensors.into_iter().collect();
    sorted.sort_by_key(|(name, _)| *name);
    let mut hasher = Sha256::new();
    for (name, bytes) in sorted {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A safetensors file of `tensors`, with their [`content_hash`] in the metadata; their byte
/// lengths must match dtype and dims.
pub fn serialize_tensors(
    tensors: &[NamedTensor],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> anyhow::Result<Vec<u8>> {
    let mut metadata = metadata.unwrap_or_default();
    metadata.insert(CONTENT_HASH_KEY.into(), content_hash(tensors.iter().map(|(name, _, _, bytes)| (name.as_str(), bytes.as_slice()))));
    let metadata = Some(metadata);
    let views = tensors
        .iter()
        .map(|(name, dtype, dims, bytes)| Ok((name.clone(), safetensors::tensor::TensorView::new(*dtype, dims.clone(), bytes)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    with_sorted_header(safetensors::serialize(views, metadata)?)
}

/// safetensors writes its `__metadata__` map in a `HashMap`'s random order, so two saves of the
/// same tensors differed in their bytes. The header is written again with every key sorted, so
/// equal weights make equal files (a checksum identifies a model); the data and its offsets
/// stay as they are.
fn with_sorted_header(bytes: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    fn sorted(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let entries: std::collections::BTreeMap<String, serde_json::Value> = map.into_iter().collect();
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
            }
            other => other,
        }
    }
    let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header = sorted(serde_json::from_slice(&bytes[8..8 + n])?);
    let mut header = serde_json::to_vec(&header)?;
    // The data starts 8-byte aligned, as safetensors writes it.
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + header.len() + bytes.len() - 8 - n);
    out.extend((header.len() as u64).to_le_bytes());
    out.extend(header);
    out.extend(&bytes[8 + n..]);
    Ok(out)
}

/// Exact (erf) GELU as one tape node, computed in parallel. dfdx's `accurate_gelu` calls
/// libm's erf one element at a time on one thread, which took a tenth of BERT's time.
pub fn gelu<T: Tape<f32, Cpu>>(x: Matrix<T>) -> Matrix<T> {
    use rayon::prelude::*;
    let shape = *x.shape();
    let (x, mut tape) = x.split_tape();
    let xs = contiguous_values(&x);
    let out = x.device().tensor_from_vec(gelu_values(&xs), shape);
    if !T::OWNS_TAPE {
        return out.put_tape(tape);
    }
    let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        let d_out = grads.get_or_alloc_mut(&out_ghost)?.to_vec();
        let d_x = grads.get_or_alloc_mut(&x_ghost)?;
        d_x.par_chunks_mut(GELU_CHUNK)
            .zip(xs.par_chunks(GELU_CHUNK))
            .zip(d_out.par_chunks(GELU_CHUNK))
            .for_each(|((d, v), g)| gelu_backward_kernel(v, g, d));
        Ok(())
    });
    out.put_tape(tape)
}

const GELU_CHUNK: usize = 1 << 14;

/// Exact GELU of plain values, in parallel.
pub fn gelu_values(xs: &[f32]) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = vec![0f32; xs.len()];
    out.par_chunks_mut(GELU_CHUNK).zip(xs.par_chunks(GELU_CHUNK)).for_each(|(o, v)| gelu_forward_kernel(v, o));
    out
}

#[inline(always)]
fn gelu_in_place_generic(xs: &mut [f32]) {
    for v in xs.iter_mut() {
        *v *= std_normal_cdf(*v);
    }
}

dispatch!(
    /// Exact GELU in place (the packed GEMMs fuse it after the bias).
    pub fn gelu_in_place = gelu_in_place_generic(xs: &mut [f32])
);

#[inline(always)]
fn gelu_forward_generic(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v * std_normal_cdf(v);
    }
}

#[inline(always)]
fn gelu_backward_generic(x: &[f32], d_out: &[f32], d_x: &mut [f32]) {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for ((d, &v), &g) in d_x.iter_mut().zip(x).zip(d_out) {
        // d/dx x·Φ(x) = Φ(x) + x·φ(x)
        *d += g * (std_normal_cdf(v) + v * INV_SQRT_2PI * exp_fast(-0.5 * v * v));
    }
}

dispatch!(fn gelu_forward_kernel = gelu_forward_generic(x: &[f32], out: &mut [f32]));
dispatch!(fn gelu_backward_kernel = gelu_backward_generic(x: &[f32], d_out: &[f32], d_x: &mut [f32]));

/// Φ(x) = (1 + erf(x/√2)) / 2, with erf from Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7).
#[inline(always)]
fn std_normal_cdf(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let a = z.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let erf_abs = 1.0 - poly * exp_fast(-a * a);
    0.5 * (1.0 + erf_abs.copysign(z))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal tensors and metadata make equal bytes, save after save (the metadata map is a
    /// `HashMap`, whose order changes from one map to the next), and the file reads back.
    #[test]
    fn equal_tensors_serialize_to_equal_bytes() {
        let values: Vec<f32> = (0..12).map(|v| v as f32 * 0.5).collect();
        let tensors: Vec<NamedTensor> = vec![
            ("b.weight".into(), safetensors::Dtype::F32, vec![3, 4], f32_bytes(&values)),
            ("a.bias".into(), safetensors::Dtype::F32, vec![2], f32_bytes(&values[..2])),
        ];
        let metadata = || (0..6).map(|k| (format!("key{k}"), format!("value{k}"))).collect::<std::collections::HashMap<_, _>>();
        let first = serialize_tensors(&tensors, Some(metadata())).unwrap();
        for _ in 0..8 {
            assert!(serialize_tensors(&tensors, Some(metadata())).unwrap() == first, "two saves of the same tensors differ");
        }
        let (_, read) = safetensors::SafeTensors::read_metadata(&first).unwrap();
        let meta = read.metadata().as_ref().unwrap();
        assert_eq!(meta.get("key3").map(String::as_str), Some("value3"));
        assert!(meta.contains_key(CONTENT_HASH_KEY));
        let file = safetensors::SafeTensors::deserialize(&first).unwrap();
        assert_eq!(f32_values(file.tensor("b.weight").unwrap().data()), values);
        assert_eq!(file.tensor("a.bias").unwrap().shape(), &[2]);
    }
}
