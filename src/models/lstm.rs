//! A bidirectional LSTM layer as one fused dfdx operation.
//!
//! dfdx has no LSTM, and one built from its primitives records a dozen tape nodes per
//! time step. Here the whole layer is one node with a hand-written backward pass:
//! the input projection for all time steps is one GEMM, each step does one recurrent
//! GEMM plus one fused loop for the cell arithmetic, and the weight gradients are one
//! GEMM each at the end. Rows are processed longest-first so that at step `t` only the
//! prefix of rows still inside their text is computed (as PyTorch's packed sequences do);
//! padding therefore never touches the result.
//!
//! Layouts follow PyTorch's `nn.LSTM`: `weight_ih [4H, E]`, `weight_hh [4H, H]`, two biases
//! `[4H]`, gates in the order input, forget, cell, output.

use dfdx::prelude::*;

use super::cell;
use super::matmul::{matmul, MatRef};

pub type Matrix<T = NoneTape> = Tensor<(usize, usize), f32, Cpu, T>;
pub type Vector<T = NoneTape> = Tensor<(usize,), f32, Cpu, T>;

/// The weights of one direction, named as in PyTorch (`weight_ih_l0`, …).
#[derive(Clone, Debug)]
pub struct LstmDirection {
    pub weight_ih: Matrix,
    pub weight_hh: Matrix,
    pub bias_ih: Vector,
    pub bias_hh: Vector,
}

impl LstmDirection {
    pub fn hidden_size(&self) -> usize {
        self.weight_hh.shape().1
    }

    pub fn input_size(&self) -> usize {
        self.weight_ih.shape().1
    }
}

/// Batch rows ordered longest first, and how many rows are still active at each step.
struct Packing {
    /// `order[r]` is the caller's row placed at packed row `r`.
    order: Vec<usize>,
    /// `active[t]` rows (a prefix of the packed order) have a token at step `t`.
    active: Vec<usize>,
}

impl Packing {
    fn new(lengths: &[usize], steps: usize) -> Packing {
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
        let active = (0..steps).map(|t| lengths.iter().filter(|&&l| l > t).count()).collect();
        Packing { order, active }
    }
}

/// Sizes of one call.
#[derive(Clone, Copy)]
struct Dims {
    steps: usize,
    batch: usize,
    input: usize,
    hidden: usize,
}

/// What the backward pass needs from the forward pass of one direction.
struct Trace {
    /// Activated gates (i, f, g, o) per step and packed row: `[T, B, 4H]`.
    gates: Vec<f32>,
    /// Cell state after each step: `[T, B, H]`.
    cells: Vec<f32>,
    /// Cell and hidden state before each step: `[T, B, H]`.
    prev_cells: Vec<f32>,
    prev_hidden: Vec<f32>,
}

struct DirectionGrads {
    weight_ih: Vec<f32>,
    weight_hh: Vec<f32>,
    bias: Vec<f32>,
    input: Vec<f32>,
}

/// `x · W_ihᵀ + b_ih + b_hh` for every row of `x` (`[rows, E]` → `[rows, 4H]`), as one GEMM.
fn input_projection(x: &[f32], rows: usize, w: &LstmDirection) -> Vec<f32> {
    let (g4, input) = (4 * w.hidden_size(), w.input_size());
    let w_ih = w.weight_ih.as_vec();
    let bias: Vec<f32> = w.bias_ih.as_vec().iter().zip(w.bias_hh.as_vec()).map(|(a, b)| a + b).collect();
    let mut gates = vec![0f32; rows * g4];
    for row in gates.chunks_exact_mut(g4) {
        row.copy_from_slice(&bias);
    }
    matmul(&mut gates, MatRef::new(x, rows, input), MatRef::new(&w_ih, g4, input).t(), true, 1);
    gates
}

/// Where a direction's input projections come from.
enum GateInput<'a> {
    /// All of them, `[T·B, 4H]` for the packed time-major rows; turned into the activated
    /// gates in place (the backward pass reads them).
    Computed(Vec<f32>),
    /// Rows of a per-token-id table (`ids` time-major in the caller's row order), copied
    /// step by step into one small buffer.
    Table { table: &'a [f32], ids: &'a [usize], buffer: Vec<f32> },
}

impl GateInput<'_> {
    /// The input projections of step `t`'s `n` active packed rows, `[n, 4H]`.
    fn step(&mut self, t: usize, n: usize, batch: usize, g4: usize, order: &[usize]) -> &mut [f32] {
        match self {
            GateInput::Computed(gates) => &mut gates[t * batch * g4..t * batch * g4 + n * g4],
            GateInput::Table { table, ids, buffer } => {
                buffer.resize(batch * g4, 0.0);
                for (r, &b) in order[..n].iter().enumerate() {
                    let id = ids[t * batch + b];
                    buffer[r * g4..(r + 1) * g4].copy_from_slice(&table[id * g4..(id + 1) * g4]);
                }
                &mut buffer[..n * g4]
            }
        }
    }
}

/// Runs one direction's recurrence. Returns the final hidden state per packed row
/// (`[B, H]`) and, if asked, the trace (which needs `GateInput::Computed`).
fn direction_forward(
    mut input: GateInput<'_>,
    dims: Dims,
    w: &LstmDirection,
    packing: &Packing,
    reverse: bool,
    keep_trace: bool,
) -> (Vec<f32>, Option<Trace>) {
    let Dims { steps, batch, hidden, .. } = dims;
    let g4 = 4 * hidden;
    let w_hh = w.weight_hh.as_vec();
    let mut h = vec![0f32; batch * hidden];
    let mut c = vec![0f32; batch * hidden];
    assert!(!keep_trace || matches!(input, GateInput::Computed(_)), "a trace needs computed gates");
    let mut trace = keep_trace.then(|| Trace {
        gates: Vec::new(),
        cells: vec![0f32; steps * batch * hidden],
        prev_cells: vec![0f32; steps * batch * hidden],
        prev_hidden: vec![0f32; steps * batch * hidden],
    });
    for s in 0..steps {
        let t = if reverse { steps - 1 - s } else { s };
        let n = packing.active[t];
        if n == 0 {
            continue;
        }
        let state = t * batch * hidden..t * batch * hidden + n * hidden;
        let g = input.step(t, n, batch, g4, &packing.order);
        matmul(g, MatRef::new(&h[..n * hidden], n, hidden), MatRef::new(&w_hh, g4, hidden).t(), true, 1);
        if let Some(tr) = trace.as_mut() {
            tr.prev_hidden[state.clone()].copy_from_slice(&h[..n * hidden]);
            tr.prev_cells[state.clone()].copy_from_slice(&c[..n * hidden]);
        }
        cell::forward(g, &mut c[..n * hidden], &mut h[..n * hidden], hidden);
        if let Some(tr) = trace.as_mut() {
            tr.cells[state].copy_from_slice(&c[..n * hidden]);
        }
    }
    if let (Some(tr), GateInput::Computed(gates)) = (trace.as_mut(), input) {
        tr.gates = gates;
    }
    (h, trace)
}

/// Backward through one direction, from the gradient of its final hidden state.
fn direction_backward(
    xp: &[f32],
    dims: Dims,
    w: &LstmDirection,
    packing: &Packing,
    reverse: bool,
    trace: &Trace,
    d_final: &[f32],
) -> DirectionGrads {
    let Dims { steps, batch, input, hidden } = dims;
    let g4 = 4 * hidden;
    let w_ih = w.weight_ih.as_vec();
    let w_hh = w.weight_hh.as_vec();
    let mut d_gates = vec![0f32; steps * batch * g4];
    let mut dh = d_final.to_vec();
    let mut dc = vec![0f32; batch * hidden];
    for s in (0..steps).rev() {
        let t = if reverse { steps - 1 - s } else { s };
        let n = packing.active[t];
        if n == 0 {
            continue;
        }
        let base4 = t * batch * g4;
        let base = t * batch * hidden;
        cell::backward(
            &trace.gates[base4..base4 + n * g4],
            &trace.cells[base..base + n * hidden],
            &trace.prev_cells[base..base + n * hidden],
            &dh[..n * hidden],
            &mut dc[..n * hidden],
            &mut d_gates[base4..base4 + n * g4],
            hidden,
        );
        // The previous hidden state feeds only this step's gates.
        matmul(
            &mut dh[..n * hidden],
            MatRef::new(&d_gates[base4..base4 + n * g4], n, g4),
            MatRef::new(&w_hh, g4, hidden),
            false,
            1,
        );
    }
    let rows = steps * batch;
    let dg_t = MatRef::new(&d_gates, rows, g4).t();
    let mut weight_hh = vec![0f32; g4 * hidden];
    matmul(&mut weight_hh, dg_t, MatRef::new(&trace.prev_hidden, rows, hidden), false, 1);
    let mut weight_ih = vec![0f32; g4 * input];
    matmul(&mut weight_ih, dg_t, MatRef::new(xp, rows, input), false, 1);
    let mut bias = vec![0f32; g4];
    for row in d_gates.chunks_exact(g4) {
        for (b, d) in bias.iter_mut().zip(row) {
            *b += d;
        }
    }
    let mut d_input = vec![0f32; rows * input];
    matmul(&mut d_input, MatRef::new(&d_gates, rows, g4), MatRef::new(&w_ih, g4, input), false, 1);
    DirectionGrads { weight_ih, weight_hh, bias, input: d_input }
}

fn add_into(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// Bidirectional LSTM over time-major input `x` (`[T·B, E]`, row `t·B + b`), returning
/// `[B, 2H]`: the forward direction's state after each row's last token, then the
/// backward direction's state after its first token. `lengths[b]` (1..=T) are the true
/// lengths; positions past them are never read.
pub fn bilstm_final_states<T: Tape<f32, Cpu>>(
    x: Matrix<T>,
    lengths: &[usize],
    forward: &LstmDirection,
    backward: &LstmDirection,
) -> Matrix<T> {
    let batch = lengths.len();
    let (rows, input) = *x.shape();
    assert!(batch > 0 && rows % batch == 0, "input rows {rows} are not steps × batch {batch}");
    let steps = rows / batch;
    assert!(lengths.iter().all(|&l| (1..=steps).contains(&l)), "lengths must be in 1..={steps}");
    assert_eq!(input, forward.input_size(), "input width differs from weight_ih");
    let hidden = forward.hidden_size();
    let dims = Dims { steps, batch, input, hidden };
    let packing = Packing::new(lengths, steps);

    let (x, mut tape) = x.split_tape();
    let x_data = x.as_vec();
    let mut xp = vec![0f32; rows * input];
    for t in 0..steps {
        for (r, &b) in packing.order.iter().enumerate() {
            let src = (t * batch + b) * input;
            xp[(t * batch + r) * input..(t * batch + r + 1) * input].copy_from_slice(&x_data[src..src + input]);
        }
    }
    let keep = T::OWNS_TAPE;
    let ((h_fwd, tr_fwd), (h_bwd, tr_bwd)) = rayon::join(
        || direction_forward(GateInput::Computed(input_projection(&xp, rows, forward)), dims, forward, &packing, false, keep),
        || direction_forward(GateInput::Computed(input_projection(&xp, rows, backward)), dims, backward, &packing, true, keep),
    );
    let out = unpack_final_states(&packing, &h_fwd, &h_bwd, hidden);
    let dev = x.device().clone();
    let out = dev.tensor_from_vec(out, (batch, 2 * hidden));
    if !keep {
        return out.put_tape(tape);
    }

    let (tr_fwd, tr_bwd) = (tr_fwd.expect("trace kept"), tr_bwd.expect("trace kept"));
    let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
    let (fwd_w, bwd_w) = (forward.clone(), backward.clone());
    tape.add_backward_op(move |grads| {
        let d_out: Vec<f32> = grads.get_or_alloc_mut(&out_ghost)?.to_vec();
        let mut d_fwd = vec![0f32; batch * hidden];
        let mut d_bwd = vec![0f32; batch * hidden];
        for (r, &b) in packing.order.iter().enumerate() {
            d_fwd[r * hidden..(r + 1) * hidden].copy_from_slice(&d_out[b * 2 * hidden..b * 2 * hidden + hidden]);
            d_bwd[r * hidden..(r + 1) * hidden]
                .copy_from_slice(&d_out[b * 2 * hidden + hidden..(b + 1) * 2 * hidden]);
        }
        let (g_fwd, g_bwd) = rayon::join(
            || direction_backward(&xp, dims, &fwd_w, &packing, false, &tr_fwd, &d_fwd),
            || direction_backward(&xp, dims, &bwd_w, &packing, true, &tr_bwd, &d_bwd),
        );
        for (w, g) in [(&fwd_w, &g_fwd), (&bwd_w, &g_bwd)] {
            add_into(grads.get_or_alloc_mut(&w.weight_ih)?, &g.weight_ih);
            add_into(grads.get_or_alloc_mut(&w.weight_hh)?, &g.weight_hh);
            add_into(grads.get_or_alloc_mut(&w.bias_ih)?, &g.bias);
            add_into(grads.get_or_alloc_mut(&w.bias_hh)?, &g.bias);
        }
        let d_x = grads.get_or_alloc_mut(&x_ghost)?;
        for t in 0..steps {
            for (r, &b) in packing.order.iter().enumerate() {
                let dst = (t * batch + b) * input;
                let src = (t * batch + r) * input;
                for k in 0..input {
                    d_x[dst + k] += g_fwd.input[src + k] + g_bwd.input[src + k];
                }
            }
        }
        Ok(())
    });
    out.put_tape(tape)
}

/// `[B, 2H]` in the caller's row order from the packed final states of both directions.
fn unpack_final_states(packing: &Packing, h_fwd: &[f32], h_bwd: &[f32], hidden: usize) -> Vec<f32> {
    let mut out = vec![0f32; packing.order.len() * 2 * hidden];
    for (r, &b) in packing.order.iter().enumerate() {
        out[b * 2 * hidden..b * 2 * hidden + hidden].copy_from_slice(&h_fwd[r * hidden..(r + 1) * hidden]);
        out[b * 2 * hidden + hidden..(b + 1) * 2 * hidden].copy_from_slice(&h_bwd[r * hidden..(r + 1) * hidden]);
    }
    out
}

/// Input projections of the embedding rows, `embedding[id] · W_ihᵀ + b`, per token id and
/// direction, computed the first time an id is seen. For inference only: with frozen
/// weights the input GEMM of every batch becomes a row copy, which halves the work.
pub struct ProjectionCache {
    width: usize,
    forward: Vec<f32>,
    backward: Vec<f32>,
    filled: Vec<bool>,
}

impl ProjectionCache {
    pub fn new(vocab_size: usize, hidden: usize) -> ProjectionCache {
        let width = 4 * hidden;
        // Zeroed allocations are mapped lazily: rows never used cost no memory.
        ProjectionCache {
            width,
            forward: vec![0f32; vocab_size * width],
            backward: vec![0f32; vocab_size * width],
            filled: vec![false; vocab_size],
        }
    }

    /// Computes the rows of the ids not seen before.
    fn fill(&mut self, ids: &[usize], embedding: &Matrix, forward: &LstmDirection, backward: &LstmDirection) {
        let mut missing: Vec<usize> = ids.iter().copied().filter(|&i| !self.filled[i]).collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return;
        }
        let dim = embedding.shape().1;
        let table = embedding.as_vec();
        let mut x = Vec::with_capacity(missing.len() * dim);
        for &i in &missing {
            x.extend_from_slice(&table[i * dim..(i + 1) * dim]);
        }
        let (pf, pb) = rayon::join(
            || input_projection(&x, missing.len(), forward),
            || input_projection(&x, missing.len(), backward),
        );
        let w = self.width;
        for (k, &i) in missing.iter().enumerate() {
            self.forward[i * w..(i + 1) * w].copy_from_slice(&pf[k * w..(k + 1) * w]);
            self.backward[i * w..(i + 1) * w].copy_from_slice(&pb[k * w..(k + 1) * w]);
            self.filled[i] = true;
        }
    }
}

/// Inference-only Bi-LSTM straight from token ids (time-major, `ids[t·B + b]`), using and
/// filling `cache`. Same result as [`bilstm_final_states`] on the gathered embeddings.
pub fn bilstm_final_states_cached(
    ids: &[usize],
    lengths: &[usize],
    embedding: &Matrix,
    forward: &LstmDirection,
    backward: &LstmDirection,
    cache: &mut ProjectionCache,
) -> Vec<f32> {
    let batch = lengths.len();
    let steps = ids.len() / batch;
    let hidden = forward.hidden_size();
    let dims = Dims { steps, batch, input: forward.input_size(), hidden };
    let packing = Packing::new(lengths, steps);
    cache.fill(ids, embedding, forward, backward);
    let ((h_fwd, _), (h_bwd, _)) = rayon::join(
        || direction_forward(GateInput::Table { table: &cache.forward, ids, buffer: Vec::new() }, dims, forward, &packing, false, false),
        || direction_forward(GateInput::Table { table: &cache.backward, ids, buffer: Vec::new() }, dims, backward, &packing, true, false),
    );
    unpack_final_states(&packing, &h_fwd, &h_bwd, hidden)
}
