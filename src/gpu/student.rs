//! The Bi-LSTM student on the GPU: the same graph as `models::bilstm` (same packed layout,
//! same arithmetic, same parameter order), with cuBLAS for the GEMMs and `kernels/` for the
//! rest. A batch goes tokens → embedding gather → both directions (one input GEMM for all
//! steps, then per step one recurrent GEMM and the fused cell kernel) → final states →
//! pair features → tanh(fc) → output layer → logits; the backward pass runs the same steps
//! in reverse. The loss and its gradient with respect to the logits (a few numbers per
//! example) come from `crate::loss` on the host: the one definition the CPU path uses.

use anyhow::{ensure, Context, Result};
use cudarc::driver::CudaSlice;

use super::Gpu;
use crate::config::{OptimizerName, PairFeatures};
use crate::launch;
use crate::models::bilstm::{BiLstmStudent, StudentInput, StudentShape};
use crate::models::lstm::Packing;
use crate::optim::OptimizerConfig;
use crate::loss::{loss_and_grad, LossAndGrad, Targets};

/// Where each parameter sits in `params` (the order of `BiLstmStudent::params_mut`), found
/// by its checkpoint name.
#[derive(Debug, Clone, Copy)]
struct ParamIndex {
    embedder: usize,
    /// First index of each direction's `weight_ih, weight_hh, bias_ih, bias_hh` (consecutive).
    directions: [usize; 2],
    fc_weight: usize,
    fc_bias: usize,
    out_weight: usize,
    out_bias: usize,
}

impl ParamIndex {
    fn new(names: &[String]) -> Result<ParamIndex> {
        let find = |name: &str| names.iter().position(|n| n == name).with_context(|| format!("the student has no parameter {name}"));
        let direction = |suffix: &str| -> Result<usize> {
            let first = find(&format!("lstm.weight_ih_l0{suffix}"))?;
            for (offset, part) in ["weight_hh", "bias_ih", "bias_hh"].iter().enumerate() {
                ensure!(find(&format!("lstm.{part}_l0{suffix}"))? == first + 1 + offset, "lstm{suffix}: parameters out of order");
            }
            Ok(first)
        };
        Ok(ParamIndex {
            embedder: find("embedder.weight")?,
            directions: [direction("")?, direction("_reverse")?],
            fc_weight: find("fc.weight")?,
            fc_bias: find("fc.bias")?,
            out_weight: find("output_layer.weight")?,
            out_bias: find("output_layer.bias")?,
        })
    }
}

/// What one direction's backward pass needs from its forward pass (as `models::lstm`'s trace).
struct DirectionTrace {
    /// Activated gates `[total, 4H]`.
    gates: CudaSlice<f32>,
    /// Cell state after, and cell and hidden state before, each packed token's step `[total, H]`.
    cells: CudaSlice<f32>,
    prev_cells: CudaSlice<f32>,
    prev_hidden: CudaSlice<f32>,
}

/// The activations of one training forward pass.
struct Activations {
    ids: CudaSlice<i32>,
    order: CudaSlice<i32>,
    /// Embedded tokens after dropout `[total, E]`, and the dropout factors.
    x: CudaSlice<f32>,
    x_mask: Option<CudaSlice<f32>>,
    traces: [DirectionTrace; 2],
    /// Final states `[rows, 2H]`; features after dropout `[examples, F]`; tanh(fc) `[examples, fc]`.
    encoded: CudaSlice<f32>,
    features: CudaSlice<f32>,
    features_mask: Option<CudaSlice<f32>>,
    hidden: CudaSlice<f32>,
}

pub struct GpuStudent {
    gpu: Gpu,
    pub shape: StudentShape,
    dropout: f32,
    params: Vec<CudaSlice<f32>>,
    index: ParamIndex,
    grads: Vec<CudaSlice<f32>>,
    /// Optimizer state per parameter (Adadelta: square and delta averages; Adam: m and v).
    state: Vec<(CudaSlice<f32>, CudaSlice<f32>)>,
    /// Sparse Adadelta: the step of each embedding row's last update.
    row_step: CudaSlice<i32>,
    optimizer: OptimizerConfig,
    steps: u32,
    seed: u32,
}

impl GpuStudent {
    /// Copies `model`'s weights to the GPU; `optimizer` is used by [`GpuStudent::train_step`].
    pub fn new(gpu: Gpu, model: &mut BiLstmStudent, optimizer: OptimizerConfig, seed: u64) -> Result<GpuStudent> {
        ensure!(
            optimizer.weight_decay == 0.0,
            "the GPU student has no weight decay; the student's optimizers use none"
        );
        let names: Vec<String> = model.params_mut().into_iter().map(|(n, _)| n).collect();
        let index = ParamIndex::new(&names)?;
        let values: Vec<Vec<f32>> = model.params_mut().iter().map(|(_, p)| p.values()).collect();
        let params = values.iter().map(|v| gpu.upload(v)).collect::<Result<Vec<_>>>()?;
        let grads = values.iter().map(|v| gpu.zeros(v.len())).collect::<Result<Vec<_>>>()?;
        let state = values.iter().map(|v| Ok((gpu.zeros(v.len())?, gpu.zeros(v.len())?))).collect::<Result<Vec<_>>>()?;
        let row_step = gpu.upload(&vec![0i32; model.shape.vocab_size])?;
        Ok(GpuStudent {
            gpu,
            shape: model.shape,
            index,
            dropout: model.dropout,
            params,
            grads,
            state,
            row_step,
            optimizer,
            steps: 0,
            seed: seed as u32,
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Copies the GPU weights back into `model` (for checkpoints and CPU inference).
    pub fn copy_to(&self, model: &mut BiLstmStudent) -> Result<()> {
        for ((_, mut param), values) in model.params_mut().into_iter().zip(&self.params) {
            param.set_values(&self.gpu.download(values)?);
        }
        Ok(())
    }

    /// Replaces the GPU weights with `model`'s (optimizer state is kept).
    pub fn copy_from(&mut self, model: &mut BiLstmStudent) -> Result<()> {
        for (values, (_, param)) in self.params.iter_mut().zip(model.params_mut()) {
            *values = self.gpu.upload(&param.values())?;
        }
        Ok(())
    }

    /// Logits `[examples, labels]` without dropout.
    pub fn predict_logits(&self, input: &StudentInput) -> Result<Vec<f32>> {
        let (logits, _) = self.forward(input, false)?;
        self.gpu.download(&logits)
    }

    /// One optimizer step on a batch; returns the batch's loss (a non-finite loss makes no
    /// update). The loss and its gradient with respect to the logits come from `crate::loss`
    /// on the host, the one definition the CPU path uses too. `max_grad_norm` > 0 clips the
    /// global gradient norm first, as the CPU path does.
    pub fn train_step(&mut self, input: &StudentInput, labels: &[usize], targets: &Targets, max_grad_norm: f32, train_embeddings: bool) -> Result<f32> {
        let (logits, acts) = self.forward(input, true)?;
        let logits = self.gpu.download(&logits)?;
        let LossAndGrad { loss, d_logits } = loss_and_grad(&logits, labels, targets, self.shape.num_labels);
        if !loss.is_finite() {
            return Ok(loss); // no update; the caller stops with advice, as on the CPU
        }
        let acts = acts.expect("a training pass keeps its activations");
        self.backward(input, &acts, &d_logits)?;
        if max_grad_norm > 0.0 {
            self.clip_grad_norm(max_grad_norm)?;
        }
        self.update(input, train_embeddings)?;
        Ok(loss)
    }

    fn forward(&self, input: &StudentInput, train: bool) -> Result<(CudaSlice<f32>, Option<Activations>)> {
        let gpu = &self.gpu;
        let s = self.shape;
        let (e, h) = (s.embedding_dim, s.hidden_size);
        let packing = &input.tokens.packing;
        let (rows, total) = (packing.batch(), packing.total);
        let examples = input.examples;
        let dropout = train && self.dropout > 0.0;

        let ids: Vec<i32> = input.tokens.ids.iter().map(|&i| i as i32).collect();
        let ids = gpu.upload(&ids)?;
        let order: Vec<i32> = packing.order.iter().map(|&i| i as i32).collect();
        let order = gpu.upload(&order)?;
        let mut x = gpu.zeros(total * e)?;
        launch!(gpu, "gather_rows", total * e; &self.params[self.index.embedder], &ids, &mut x, &(total as i32), &(e as i32))?;
        let x_mask = if dropout { Some(self.dropout_in_place(&mut x, 1)?) } else { None };

        let mut finals = Vec::with_capacity(2);
        let mut traces = Vec::with_capacity(2);
        for (d, &first) in self.index.directions.iter().enumerate() {
            let (h_final, trace) = self.direction_forward(&x, packing, first, d == 1, train)?;
            finals.push(h_final);
            traces.extend(trace);
        }
        let mut encoded = gpu.zeros(rows * 2 * h)?;
        launch!(gpu, "unpack_final_states", rows * h; &finals[0], &finals[1], &order, &mut encoded, &(rows as i32), &(h as i32))?;

        let mut features = match s.pair_features {
            None => gpu.copy_new(&encoded)?,
            Some(mode) => {
                let mut out = gpu.zeros(examples * 8 * h)?;
                launch!(gpu, "pair_features_forward", examples * 2 * h;
                    &encoded, &mut out, &(examples as i32), &((2 * h) as i32), &pair_mode(mode))?;
                out
            }
        };
        let features_mask = if dropout { Some(self.dropout_in_place(&mut features, 2)?) } else { None };
        let width = features.len() / examples.max(1);
        let mut hidden = gpu.zeros(examples * s.fc_size)?;
        self.linear(&mut hidden, &features, self.index.fc_weight, self.index.fc_bias, (examples, s.fc_size, width))?;
        launch!(gpu, "tanh_forward", examples * s.fc_size; &mut hidden, &((examples * s.fc_size) as i32))?;
        let mut logits = gpu.zeros(examples * s.num_labels)?;
        self.linear(&mut logits, &hidden, self.index.out_weight, self.index.out_bias, (examples, s.num_labels, s.fc_size))?;

        let acts = train.then(|| {
            let [fwd, bwd]: [DirectionTrace; 2] = traces.try_into().unwrap_or_else(|_| unreachable!("two traces"));
            Activations { ids, order, x, x_mask, traces: [fwd, bwd], encoded, features, features_mask, hidden }
        });
        Ok((logits, acts))
    }

    /// `out[rows×outputs] = input·weightᵀ + bias` (PyTorch's `[out, in]` weight).
    fn linear(&self, out: &mut CudaSlice<f32>, input: &CudaSlice<f32>, weight: usize, bias: usize, (rows, outputs, inputs): (usize, usize, usize)) -> Result<()> {
        let gpu = &self.gpu;
        launch!(gpu, "fill_rows", rows * outputs; &mut *out, &self.params[bias], &(rows as i32), &(outputs as i32))?;
        gpu.matmul(out, input, false, &self.params[weight], true, (rows, outputs, inputs), 1.0)
    }

    /// Inverted dropout on `x`; returns the factors for the backward pass. `site` tells the
    /// two dropout places apart in the mask hash.
    fn dropout_in_place(&self, x: &mut CudaSlice<f32>, site: u32) -> Result<CudaSlice<f32>> {
        let n = x.len();
        let mut mask = self.gpu.zeros(n)?;
        let seed = self.seed.wrapping_mul(2654435761).wrapping_add(site);
        launch!(&self.gpu, "dropout_forward", n; &mut *x, &mut mask, &(n as i32), &self.dropout, &seed, &self.steps)?;
        Ok(mask)
    }

    /// One direction over packed `x`: returns the final hidden state per packed row `[B, H]`
    /// and, when training, the trace.
    fn direction_forward(&self, x: &CudaSlice<f32>, packing: &Packing, first: usize, reverse: bool, keep: bool) -> Result<(CudaSlice<f32>, Option<DirectionTrace>)> {
        let gpu = &self.gpu;
        let (e, h) = (self.shape.embedding_dim, self.shape.hidden_size);
        let g4 = 4 * h;
        let (batch, steps, total) = (packing.batch(), packing.steps(), packing.total);
        let (w_ih, w_hh, b_ih, b_hh) = (&self.params[first], &self.params[first + 1], &self.params[first + 2], &self.params[first + 3]);

        // Input projection of every step at once: gates = b_ih + b_hh + x·W_ihᵀ.
        let mut gates = gpu.zeros(total * g4)?;
        launch!(gpu, "fill_rows", total * g4; &mut gates, b_ih, &(total as i32), &(g4 as i32))?;
        launch!(gpu, "add_rows", total * g4; &mut gates, b_hh, &(total as i32), &(g4 as i32))?;
        gpu.matmul(&mut gates, x, false, w_ih, true, (total, g4, e), 1.0)?;

        let mut hs = gpu.zeros(batch * h)?;
        let mut cs = gpu.zeros(batch * h)?;
        let mut trace = if keep {
            Some((gpu.zeros(total * h)?, gpu.zeros(total * h)?, gpu.zeros(total * h)?))
        } else {
            None
        };
        for s in 0..steps {
            let t = if reverse { steps - 1 - s } else { s };
            let (start, n) = (packing.offsets[t], packing.active[t]);
            let state = start * h..(start + n) * h;
            let mut g = gates.slice_mut(start * g4..(start + n) * g4);
            gpu.matmul(&mut g, &hs.slice(..n * h), false, w_hh, true, (n, g4, h), 1.0)?;
            if let Some((_, prev_cells, prev_hidden)) = trace.as_mut() {
                gpu.copy(&hs.slice(..n * h), &mut prev_hidden.slice_mut(state.clone()))?;
                gpu.copy(&cs.slice(..n * h), &mut prev_cells.slice_mut(state.clone()))?;
            }
            launch!(gpu, "lstm_cell_forward", n * h;
                &mut g, &mut cs.slice_mut(..n * h), &mut hs.slice_mut(..n * h), &(n as i32), &(h as i32))?;
            if let Some((cells, _, _)) = trace.as_mut() {
                gpu.copy(&cs.slice(..n * h), &mut cells.slice_mut(state))?;
            }
        }
        let trace = trace.map(|(cells, prev_cells, prev_hidden)| DirectionTrace { gates, cells, prev_cells, prev_hidden });
        Ok((hs, trace))
    }

    /// Gradients of every parameter (into `self.grads`, overwritten) from `d_logits`.
    fn backward(&mut self, input: &StudentInput, acts: &Activations, d_logits: &[f32]) -> Result<()> {
        let s = self.shape;
        let h = s.hidden_size;
        let packing = &input.tokens.packing;
        let (rows, total, examples) = (packing.batch(), packing.total, input.examples);
        let mut grads = std::mem::take(&mut self.grads);
        let result = (|| -> Result<()> {
            let gpu = &self.gpu;
            let d_logits = gpu.upload(d_logits)?;
            // Output layer and fc.
            let mut d_hidden = gpu.zeros(examples * s.fc_size)?;
            self.linear_backward(&mut grads, &d_logits, &acts.hidden, &mut d_hidden, self.index.out_weight, self.index.out_bias, (examples, s.num_labels, s.fc_size))?;
            launch!(gpu, "tanh_backward", examples * s.fc_size; &acts.hidden, &mut d_hidden, &((examples * s.fc_size) as i32))?;
            let width = acts.features.len() / examples.max(1);
            let mut d_features = gpu.zeros(examples * width)?;
            self.linear_backward(&mut grads, &d_hidden, &acts.features, &mut d_features, self.index.fc_weight, self.index.fc_bias, (examples, s.fc_size, width))?;
            if let Some(mask) = &acts.features_mask {
                let n = d_features.len();
                launch!(gpu, "multiply", n; &mut d_features, mask, &(n as i32))?;
            }
            let d_encoded = match s.pair_features {
                None => d_features,
                Some(mode) => {
                    let mut d_enc = gpu.zeros(rows * 2 * h)?;
                    launch!(gpu, "pair_features_backward", examples * 2 * h;
                        &acts.encoded, &d_features, &mut d_enc, &(examples as i32), &((2 * h) as i32), &pair_mode(mode))?;
                    d_enc
                }
            };
            let (mut d_fwd, mut d_bwd) = (gpu.zeros(rows * h)?, gpu.zeros(rows * h)?);
            launch!(gpu, "pack_final_state_grads", rows * h; &d_encoded, &acts.order, &mut d_fwd, &mut d_bwd, &(rows as i32), &(h as i32))?;

            // Both directions; their input gradients add up in d_x.
            let mut d_x = gpu.zeros(total * s.embedding_dim)?;
            for (d, (&first, d_final)) in self.index.directions.iter().zip([d_fwd, d_bwd]).enumerate() {
                self.direction_backward(&mut grads, &acts.x, packing, first, d == 1, &acts.traces[d], d_final, &mut d_x, d > 0)?;
            }
            if let Some(mask) = &acts.x_mask {
                let n = d_x.len();
                launch!(gpu, "multiply", n; &mut d_x, mask, &(n as i32))?;
            }
            gpu.set_zero(&mut grads[self.index.embedder])?;
            let e = s.embedding_dim;
            launch!(gpu, "scatter_add_rows", total * e; &d_x, &acts.ids, &mut grads[self.index.embedder], &(total as i32), &(e as i32))?;
            Ok(())
        })();
        self.grads = grads;
        result
    }

    /// Backward of [`GpuStudent::linear`]: weight and bias gradients (overwritten) and `d_input`.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        grads: &mut [CudaSlice<f32>],
        d_out: &CudaSlice<f32>,
        input: &CudaSlice<f32>,
        d_input: &mut CudaSlice<f32>,
        weight: usize,
        bias: usize,
        (rows, outputs, inputs): (usize, usize, usize),
    ) -> Result<()> {
        let gpu = &self.gpu;
        gpu.matmul(&mut grads[weight], d_out, true, input, false, (outputs, inputs, rows), 0.0)?;
        launch!(gpu, "column_sums", outputs; d_out, &mut grads[bias], &(rows as i32), &(outputs as i32), &0i32)?;
        gpu.matmul(d_input, d_out, false, &self.params[weight], false, (rows, inputs, outputs), 0.0)
    }

    #[allow(clippy::too_many_arguments)]
    fn direction_backward(
        &self,
        grads: &mut [CudaSlice<f32>],
        x: &CudaSlice<f32>,
        packing: &Packing,
        first: usize,
        reverse: bool,
        trace: &DirectionTrace,
        mut dh: CudaSlice<f32>,
        d_x: &mut CudaSlice<f32>,
        accumulate: bool,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let (e, h) = (self.shape.embedding_dim, self.shape.hidden_size);
        let g4 = 4 * h;
        let (batch, steps, total) = (packing.batch(), packing.steps(), packing.total);
        let mut d_gates = gpu.zeros(total * g4)?;
        let mut dc = gpu.zeros(batch * h)?;
        for s in (0..steps).rev() {
            let t = if reverse { steps - 1 - s } else { s };
            let (start, n) = (packing.offsets[t], packing.active[t]);
            let (state, gate_rows) = (start * h..(start + n) * h, start * g4..(start + n) * g4);
            launch!(gpu, "lstm_cell_backward", n * h;
                &trace.gates.slice(gate_rows.clone()), &trace.cells.slice(state.clone()), &trace.prev_cells.slice(state),
                &dh.slice(..n * h), &mut dc.slice_mut(..n * h), &mut d_gates.slice_mut(gate_rows.clone()),
                &(n as i32), &(h as i32))?;
            // The previous hidden state feeds only this step's gates.
            gpu.matmul(&mut dh.slice_mut(..n * h), &d_gates.slice(gate_rows), false, &self.params[first + 1], false, (n, h, g4), 0.0)?;
        }
        gpu.matmul(&mut grads[first], &d_gates, true, x, false, (g4, e, total), 0.0)?;
        gpu.matmul(&mut grads[first + 1], &d_gates, true, &trace.prev_hidden, false, (g4, h, total), 0.0)?;
        launch!(gpu, "column_sums", g4; &d_gates, &mut grads[first + 2], &(total as i32), &(g4 as i32), &0i32)?;
        let (bias_ih, rest) = grads.split_at_mut(first + 3);
        gpu.copy(&bias_ih[first + 2], &mut rest[0])?;
        gpu.matmul(d_x, &d_gates, false, &self.params[first], false, (total, e, g4), if accumulate { 1.0 } else { 0.0 })
    }

    /// Scales all gradients so that their global L2 norm is at most `max_norm` (the CPU path's rule).
    fn clip_grad_norm(&mut self, max_norm: f32) -> Result<f32> {
        let gpu = &self.gpu;
        let mut total = gpu.zeros(1)?;
        for g in &self.grads {
            launch!(gpu, "sum_squares", g.len().min(1 << 16); g, &(g.len() as i32), &mut total)?;
        }
        let norm = gpu.download(&total)?[0].sqrt();
        if norm > max_norm {
            let factor = max_norm / (norm + 1e-6);
            for g in &mut self.grads {
                let n = g.len();
                launch!(gpu, "scale", n; &mut *g, &(n as i32), &factor)?;
            }
        }
        Ok(norm)
    }

    /// The optimizer step; Adadelta updates only the batch's embedding rows (exactly, see `optim.rs`).
    fn update(&mut self, input: &StudentInput, train_embeddings: bool) -> Result<()> {
        self.steps += 1;
        let cfg = self.optimizer;
        let step = self.steps as i32;
        let gpu = &self.gpu;
        for (i, (param, ((s1, s2), grad))) in self.params.iter_mut().zip(self.state.iter_mut().zip(&self.grads)).enumerate() {
            if i == self.index.embedder && !train_embeddings {
                continue;
            }
            let n = param.len();
            match cfg.kind {
                OptimizerName::Adadelta if i == self.index.embedder => {
                    let rows: Vec<i32> = input.tokens.distinct_ids().into_iter().map(|r| r as i32).collect();
                    let rows_dev = gpu.upload(&rows)?;
                    let (nrows, width) = (rows.len() as i32, self.shape.embedding_dim as i32);
                    launch!(gpu, "adadelta_rows", rows.len() * self.shape.embedding_dim;
                        &mut *param, grad, &mut *s1, &mut *s2, &rows_dev, &nrows, &width, &self.row_step, &step, &cfg.rho, &cfg.eps, &cfg.lr)?;
                    launch!(gpu, "mark_rows", rows.len(); &rows_dev, &nrows, &mut self.row_step, &step)?;
                }
                OptimizerName::Adadelta => {
                    launch!(gpu, "adadelta_dense", n; &mut *param, grad, &mut *s1, &mut *s2, &(n as i32), &cfg.rho, &cfg.eps, &cfg.lr)?;
                }
                OptimizerName::Adam => {
                    let step_size = cfg.lr / (1.0 - cfg.beta1.powi(step));
                    let correction2 = 1.0 - cfg.beta2.powi(step);
                    launch!(gpu, "adam", n; &mut *param, grad, &mut *s1, &mut *s2, &(n as i32), &cfg.beta1, &cfg.beta2, &cfg.eps, &step_size, &correction2)?;
                }
            }
        }
        Ok(())
    }
}

fn pair_mode(mode: PairFeatures) -> i32 {
    match mode {
        PairFeatures::Tang => 0,
        PairFeatures::Seed => 1,
    }
}
