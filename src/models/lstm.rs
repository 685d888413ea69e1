//! A bidirectional LSTM layer as one fused dfdx operation.
//!
//! dfdx has no LSTM, and one built from its primitives records a dozen tape nodes per
//! time step. Here the whole layer is one node with a hand-written backward pass:
//! the input projection for all time steps is one GEMM, each step does one recurrent
//! GEMM plus one fused loop for the cell arithmetic, and the weight gradients are one
//! GEMM each at the end. Tokens are in PyTorch's packed-sequence layout: rows longest
//! first, and at step `t` only the rows still inside their text are stored and computed,
//! so padding is never computed and never touches the result.
//!
//! Layouts follow PyTorch's `nn.LSTM`: `weight_ih [4H, E]`, `weight_hh [4H, H]`, two biases
//! `[4H]`, gates in the order input, forget, cell, output.

use dfdx::prelude::*;

use super::layers::{contiguous_values, Embedding};
use crate::ops::cell;
use crate::ops::matmul::{matmul, MatRef, PackedRhs};
use crate::ops::packed::{Activation, PackedLinear, Precision};

pub use crate::ops::{Matrix, Vector};

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

/// A batch of sequences in PyTorch's packed layout: rows sorted longest first, and the
/// tokens stored step by step, each step holding only the rows whose text is that long.
/// Padding is never stored, so it can never change a result.
#[derive(Debug, Clone)]
pub struct Packing {
    /// `order[r]` is the caller's row placed at packed row `r`.
    pub order: Vec<usize>,
    /// `active[t]` rows (a prefix of the packed order) have a token at step `t`.
    pub active: Vec<usize>,
    /// Step `t`'s tokens are packed rows `offsets[t] .. offsets[t] + active[t]`.
    pub offsets: Vec<usize>,
    /// Tokens in the batch.
    pub total: usize,
}

impl Packing {
    /// Packs sequences of these lengths (each at least 1).
    pub fn new(lengths: &[usize]) -> Packing {
        assert!(lengths.iter().all(|&l| l > 0), "every sequence needs at least one token");
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
        let steps = lengths.iter().copied().max().unwrap_or(0);
        let active: Vec<usize> = (0..steps).map(|t| lengths.iter().filter(|&&l| l > t).count()).collect();
        let mut offsets = Vec::with_capacity(steps);
        let mut total = 0;
        for &n in &active {
            offsets.push(total);
            total += n;
        }
        Packing { order, active, offsets, total }
    }

    pub fn batch(&self) -> usize {
        self.order.len()
    }

    pub fn steps(&self) -> usize {
        self.active.len()
    }

    /// Rows of step `t` that carry a state from the step before them in this direction (a
    /// prefix of the step's rows); the others start from zero, so no recurrent product is
    /// needed for them, nor a gradient into their (constant) initial state. Forward: all rows
    /// but at the first step; reverse: the rows that were active one step later.
    pub fn carried(&self, t: usize, reverse: bool) -> usize {
        let before = if reverse { self.active.get(t + 1).copied().unwrap_or(0) } else if t == 0 { 0 } else { self.active[t - 1] };
        before.min(self.active[t])
    }

    /// Packs per-row sequences (`seqs[b][t]`) into the packed token order.
    pub fn pack<X: Copy>(&self, seqs: &[&[X]]) -> Vec<X> {
        let mut out = Vec::with_capacity(self.total);
        for (t, &n) in self.active.iter().enumerate() {
            out.extend(self.order[..n].iter().map(|&b| seqs[b][t]));
        }
        out
    }
}

/// What the backward pass needs from the forward pass of one direction, per packed token.
struct Trace {
    /// Activated gates (i, f, g, o): `[total, 4H]`.
    gates: Vec<f32>,
    /// Cell state after the token's step: `[total, H]`.
    cells: Vec<f32>,
    /// Cell and hidden state before the token's step: `[total, H]`.
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
    let w_ih = contiguous_values(&w.weight_ih);
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
    /// All of them, `[total, 4H]` in packed order; turned into the activated gates in
    /// place (the backward pass reads them).
    Computed(Vec<f32>),
    /// Rows of a per-token-id table (`ids` in packed order), copied step by step into one
    /// small buffer.
    Table { table: &'a [f32], ids: &'a [usize], buffer: Vec<f32> },
}

impl GateInput<'_> {
    /// The input projections of the `n` tokens starting at packed row `start`, `[n, 4H]`.
    fn step(&mut self, start: usize, n: usize, g4: usize) -> &mut [f32] {
        match self {
            GateInput::Computed(gates) => &mut gates[start * g4..(start + n) * g4],
            GateInput::Table { table, ids, buffer } => {
                buffer.resize(n.max(buffer.len() / g4) * g4, 0.0);
                for (r, &id) in ids[start..start + n].iter().enumerate() {
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
    packing: &Packing,
    w_hh_t: &Recurrent,
    hidden: usize,
    reverse: bool,
    keep_trace: bool,
) -> (Vec<f32>, Option<Trace>) {
    let (batch, steps, total) = (packing.batch(), packing.steps(), packing.total);
    let g4 = 4 * hidden;
    let mut h = vec![0f32; batch * hidden];
    let mut c = vec![0f32; batch * hidden];
    assert!(!keep_trace || matches!(input, GateInput::Computed(_)), "a trace needs computed gates");
    let mut trace = keep_trace.then(|| Trace {
        gates: Vec::new(),
        cells: vec![0f32; total * hidden],
        prev_cells: vec![0f32; total * hidden],
        prev_hidden: vec![0f32; total * hidden],
    });
    for s in 0..steps {
        let t = if reverse { steps - 1 - s } else { s };
        let (start, n) = (packing.offsets[t], packing.active[t]);
        let state = start * hidden..(start + n) * hidden;
        let g = input.step(start, n, g4);
        let carried = packing.carried(t, reverse);
        if carried > 0 {
            w_hh_t.matmul_acc(&mut g[..carried * g4], &h[..carried * hidden], carried);
        }
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

/// `W_hh` packed for the recurrent products of one direction: FP32 (training, and inference
/// by default) or a reduced precision for inference (`distill predict --precision int8|bf16`).
pub enum Recurrent {
    F32(PackedRhs),
    /// INT8: per-gate-column weight scales, the hidden state quantised per row at each step;
    /// the weight streams as bytes, a quarter of FP32's traffic, and a one-sentence prediction
    /// reads the whole `W_hh` once per token, so that traffic is most of its time. (BF16: the
    /// teacher's BF16 GEMM.)
    Reduced(PackedLinear),
}

impl Recurrent {
    pub fn new(w: &LstmDirection, precision: Precision) -> Recurrent {
        let hidden = w.hidden_size();
        let weight = contiguous_values(&w.weight_hh);
        match precision {
            Precision::F32 => Recurrent::F32(PackedRhs::new(MatRef::new(&weight, 4 * hidden, hidden).t())),
            other => Recurrent::Reduced(PackedLinear::new(&weight, &vec![0.0; 4 * hidden], 4 * hidden, hidden, other)),
        }
    }

    /// `gates (m × 4H) += h (m × H) · W_hhᵀ`.
    fn matmul_acc(&self, gates: &mut [f32], h: &[f32], m: usize) {
        match self {
            Recurrent::F32(packed) => packed.matmul_acc(gates, h, m),
            Recurrent::Reduced(linear) => {
                let product = linear.forward(h, m, Activation::None);
                gates.iter_mut().zip(&product).for_each(|(g, p)| *g += p);
            }
        }
    }
}

/// Backward through one direction, from the gradient of its final hidden state.
fn direction_backward(
    x: &[f32],
    packing: &Packing,
    w: &LstmDirection,
    reverse: bool,
    trace: &Trace,
    d_final: &[f32],
) -> DirectionGrads {
    let (batch, steps, total) = (packing.batch(), packing.steps(), packing.total);
    let (hidden, input) = (w.hidden_size(), w.input_size());
    let g4 = 4 * hidden;
    let w_ih = contiguous_values(&w.weight_ih);
    let w_hh = PackedRhs::new(MatRef::new(&contiguous_values(&w.weight_hh), g4, hidden));
    let mut d_gates = vec![0f32; total * g4];
    let mut dh = d_final.to_vec();
    let mut dc = vec![0f32; batch * hidden];
    for s in (0..steps).rev() {
        let t = if reverse { steps - 1 - s } else { s };
        let (start, n) = (packing.offsets[t], packing.active[t]);
        let state = start * hidden..(start + n) * hidden;
        let gates = start * g4..(start + n) * g4;
        cell::backward(
            &trace.gates[gates.clone()],
            &trace.cells[state.clone()],
            &trace.prev_cells[state],
            &dh[..n * hidden],
            &mut dc[..n * hidden],
            &mut d_gates[gates],
            hidden,
        );
        // The previous hidden state feeds only this step's gates.
        dh[..n * hidden].fill(0.0);
        let carried = packing.carried(t, reverse);
        if carried > 0 {
            w_hh.matmul_acc(&mut dh[..carried * hidden], &d_gates[start * g4..(start + carried) * g4], carried);
        }
    }
    let dg_t = MatRef::new(&d_gates, total, g4).t();
    let mut weight_hh = vec![0f32; g4 * hidden];
    matmul(&mut weight_hh, dg_t, MatRef::new(&trace.prev_hidden, total, hidden), false, 1);
    let mut weight_ih = vec![0f32; g4 * input];
    matmul(&mut weight_ih, dg_t, MatRef::new(x, total, input), false, 1);
    let mut bias = vec![0f32; g4];
    for row in d_gates.chunks_exact(g4) {
        for (b, d) in bias.iter_mut().zip(row) {
            *b += d;
        }
    }
    let mut d_input = vec![0f32; total * input];
    matmul(&mut d_input, MatRef::new(&d_gates, total, g4), MatRef::new(&w_ih, g4, input), false, 1);
    DirectionGrads { weight_ih, weight_hh, bias, input: d_input }
}

fn add_into(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// Bidirectional LSTM over packed input `x` (`[total, E]`, rows in `packing`'s order),
/// returning `[B, 2H]` in the caller's row order: the forward direction's state after each
/// row's last token, then the backward direction's state after its first token.
pub fn bilstm_final_states<T: Tape<f32, Cpu>>(
    x: Matrix<T>,
    packing: &Packing,
    forward: &LstmDirection,
    backward: &LstmDirection,
) -> Matrix<T> {
    let (rows, input) = *x.shape();
    assert_eq!(rows, packing.total, "input rows must be the packed tokens");
    assert_eq!(input, forward.input_size(), "input width differs from weight_ih");
    let (batch, hidden) = (packing.batch(), forward.hidden_size());
    let (x, mut tape) = x.split_tape();
    let xs = contiguous_values(&x);
    let keep = T::OWNS_TAPE;
    let run = |w: &LstmDirection, reverse: bool| {
        let recurrent = Recurrent::new(w, Precision::F32);
        direction_forward(GateInput::Computed(input_projection(&xs, rows, w)), packing, &recurrent, hidden, reverse, keep)
    };
    let ((h_fwd, tr_fwd), (h_bwd, tr_bwd)) = rayon::join(|| run(forward, false), || run(backward, true));
    let out = unpack_final_states(packing, &h_fwd, &h_bwd, hidden);
    let out = x.device().tensor_from_vec(out, (batch, 2 * hidden));
    if !keep {
        return out.put_tape(tape);
    }

    let (tr_fwd, tr_bwd) = (tr_fwd.expect("trace kept"), tr_bwd.expect("trace kept"));
    let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
    let (fwd_w, bwd_w, packing) = (forward.clone(), backward.clone(), packing.clone());
    tape.add_backward_op(move |grads| {
        let d_out: Vec<f32> = grads.get_or_alloc_mut(&out_ghost)?.to_vec();
        let mut d_fwd = vec![0f32; batch * hidden];
        let mut d_bwd = vec![0f32; batch * hidden];
        for (r, &b) in packing.order.iter().enumerate() {
            d_fwd[r * hidden..(r + 1) * hidden].copy_from_slice(&d_out[b * 2 * hidden..b * 2 * hidden + hidden]);
            d_bwd[r * hidden..(r + 1) * hidden].copy_from_slice(&d_out[b * 2 * hidden + hidden..(b + 1) * 2 * hidden]);
        }
        let (g_fwd, g_bwd) = rayon::join(
            || direction_backward(&xs, &packing, &fwd_w, false, &tr_fwd, &d_fwd),
            || direction_backward(&xs, &packing, &bwd_w, true, &tr_bwd, &d_bwd),
        );
        for (w, g) in [(&fwd_w, &g_fwd), (&bwd_w, &g_bwd)] {
            add_into(grads.get_or_alloc_mut(&w.weight_ih)?, &g.weight_ih);
            add_into(grads.get_or_alloc_mut(&w.weight_hh)?, &g.weight_hh);
            add_into(grads.get_or_alloc_mut(&w.bias_ih)?, &g.bias);
            add_into(grads.get_or_alloc_mut(&w.bias_hh)?, &g.bias);
        }
        let d_x = grads.get_or_alloc_mut(&x_ghost)?;
        add_into(d_x, &g_fwd.input);
        add_into(d_x, &g_bwd.input);
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

/// What inference with frozen weights computes once and reuses across calls: the input
/// projections of the embedding rows, `embedding[id] · W_ihᵀ + b`, per token id and
/// direction (computed the first time an id is seen), so the input GEMM of every batch
/// becomes a row copy, which halves the work; and `W_hhᵀ` packed for the recurrent products,
/// which is most of the work of a single-sentence prediction if done per call.
pub struct ProjectionCache {
    width: usize,
    forward: Vec<f32>,
    backward: Vec<f32>,
    filled: Vec<bool>,
    recurrent: [Recurrent; 2],
}

impl ProjectionCache {
    /// `precision` is that of the recurrent product (the input projections stay FP32: they
    /// are computed once per vocab entry and then only copied).
    pub fn new(vocab_size: usize, forward: &LstmDirection, backward: &LstmDirection, precision: Precision) -> ProjectionCache {
        let width = 4 * forward.hidden_size();
        // Zeroed allocations are mapped lazily: rows never used cost no memory.
        ProjectionCache {
            width,
            forward: vec![0f32; vocab_size * width],
            backward: vec![0f32; vocab_size * width],
            filled: vec![false; vocab_size],
            recurrent: [Recurrent::new(forward, precision), Recurrent::new(backward, precision)],
        }
    }

    /// Computes the rows of the ids not seen before.
    fn fill(&mut self, ids: &[usize], embedding: &Embedding, forward: &LstmDirection, backward: &LstmDirection) {
        let mut missing: Vec<usize> = ids.iter().copied().filter(|&i| !self.filled[i]).collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return;
        }
        let x = embedding.lookup(&missing);
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

/// Inference-only Bi-LSTM straight from packed token ids, using and filling `cache`.
/// Same result as [`bilstm_final_states`] on the gathered embeddings.
pub fn bilstm_final_states_cached(
    ids: &[usize],
    packing: &Packing,
    embedding: &Embedding,
    forward: &LstmDirection,
    backward: &LstmDirection,
    cache: &mut ProjectionCache,
) -> Vec<f32> {
    assert_eq!(ids.len(), packing.total);
    cache.fill(ids, embedding, forward, backward);
    let hidden = forward.hidden_size();
    let [fwd_recurrent, bwd_recurrent] = &cache.recurrent;
    let (fwd_table, bwd_table) = (&cache.forward, &cache.backward);
    let ((h_fwd, _), (h_bwd, _)) = rayon::join(
        || direction_forward(GateInput::Table { table: fwd_table, ids, buffer: Vec::new() }, packing, fwd_recurrent, hidden, false, false),
        || direction_forward(GateInput::Table { table: bwd_table, ids, buffer: Vec::new() }, packing, bwd_recurrent, hidden, true, false),
    );
    unpack_final_states(packing, &h_fwd, &h_bwd, hidden)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn carried_rows_are_those_active_one_step_earlier_in_the_direction() {
        // Lengths 4, 2, 3: active rows per step 3, 3, 2, 1.
        let packing = Packing::new(&[4, 2, 3]);
        assert_eq!(packing.active, vec![3, 3, 2, 1]);
        let forward: Vec<usize> = (0..4).map(|t| packing.carried(t, false)).collect();
        let reverse: Vec<usize> = (0..4).map(|t| packing.carried(t, true)).collect();
        assert_eq!(forward, vec![0, 3, 2, 1]);
        assert_eq!(reverse, vec![3, 2, 1, 0]);
    }

    /// One direction of an LSTM over one sequence, written out as in PyTorch's docs.
    fn plain_lstm(x: &[Vec<f32>], w: &LstmDirection) -> Vec<f32> {
        let (hidden, input) = (w.hidden_size(), w.input_size());
        let (w_ih, w_hh) = (w.weight_ih.as_vec(), w.weight_hh.as_vec());
        let bias: Vec<f32> = w.bias_ih.as_vec().iter().zip(w.bias_hh.as_vec()).map(|(a, b)| a + b).collect();
        let sigmoid = |v: f32| 1.0 / (1.0 + (-v).exp());
        let (mut h, mut c) = (vec![0f32; hidden], vec![0f32; hidden]);
        for token in x {
            let gate = |g: usize, j: usize| {
                let row = g * hidden + j;
                bias[row] + (0..input).map(|e| w_ih[row * input + e] * token[e]).sum::<f32>() + (0..hidden).map(|k| w_hh[row * hidden + k] * h[k]).sum::<f32>()
            };
            let mut next_h = vec![0f32; hidden];
            for j in 0..hidden {
                let (i, f, g, o) = (sigmoid(gate(0, j)), sigmoid(gate(1, j)), gate(2, j).tanh(), sigmoid(gate(3, j)));
                c[j] = f * c[j] + i * g;
                next_h[j] = o * c[j].tanh();
            }
            h = next_h;
        }
        h
    }

    /// Rows of different lengths in one packed batch give each sequence's own LSTM states,
    /// both directions (the reverse one starts each row at its own last token, from zero).
    #[test]
    fn packed_final_states_equal_a_plain_lstm_per_sequence() {
        let (input, hidden) = (5, 7);
        let mut rng = StdRng::seed_from_u64(3);
        let dev = Cpu::default();
        let mut random = |rows: usize, cols: usize| -> Vec<f32> { (0..rows * cols).map(|_| rng.gen_range(-0.5..0.5)).collect() };
        let mut direction = || LstmDirection {
            weight_ih: dev.tensor_from_vec(random(4 * hidden, input), (4 * hidden, input)),
            weight_hh: dev.tensor_from_vec(random(4 * hidden, hidden), (4 * hidden, hidden)),
            bias_ih: dev.tensor_from_vec(random(4 * hidden, 1), (4 * hidden,)),
            bias_hh: dev.tensor_from_vec(random(4 * hidden, 1), (4 * hidden,)),
        };
        let (forward, backward) = (direction(), direction());
        let lengths = [3usize, 6, 1, 4, 6, 2];
        let seqs: Vec<Vec<Vec<f32>>> = lengths.iter().map(|&len| (0..len).map(|_| random(1, input)).collect()).collect();
        let packing = Packing::new(&lengths);
        let positions: Vec<Vec<(usize, usize)>> = lengths.iter().enumerate().map(|(b, &len)| (0..len).map(|t| (b, t)).collect()).collect();
        let refs: Vec<&[(usize, usize)]> = positions.iter().map(|p| p.as_slice()).collect();
        let x: Vec<f32> = packing.pack(&refs).into_iter().flat_map(|(b, t)| seqs[b][t].clone()).collect();
        let x = dev.tensor_from_vec(x, (packing.total, input));
        let states = bilstm_final_states(x, &packing, &forward, &backward).as_vec();
        for (b, seq) in seqs.iter().enumerate() {
            let reversed: Vec<Vec<f32>> = seq.iter().rev().cloned().collect();
            let expected = [plain_lstm(seq, &forward), plain_lstm(&reversed, &backward)].concat();
            for (j, (got, want)) in states[b * 2 * hidden..(b + 1) * 2 * hidden].iter().zip(&expected).enumerate() {
                assert!((got - want).abs() < 1e-5, "row {b} (length {}), state {j}: {got} vs {want}", seq.len());
            }
        }
    }
}
