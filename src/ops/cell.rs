//! The LSTM cell arithmetic, fused: activations, the new cell and hidden state in one
//! pass (forward), and the gate gradients in one pass (backward).
//!
//! `exp` is a branch-free polynomial so the loops vectorise; each kernel is compiled three
//! times (AVX-512, AVX2+FMA, baseline) and picked at run time (see [`super::simd`]).

use super::simd::{dispatch, exp_fast};

#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_fast(-x))
}

#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    2.0 * sigmoid(2.0 * x) - 1.0
}

/// Lanes per block: every value is processed in full blocks (the tail padded), so no
/// element falls to a slow scalar remainder loop.
const LANES: usize = 16;
type Block = [f32; LANES];

/// Copies `src` (at most LANES values) into a zero-padded block. A full block is a
/// fixed-size copy (register moves); only the row's last, partial one calls `memcpy`.
#[inline(always)]
fn load(src: &[f32]) -> Block {
    if let Ok(full) = <&Block>::try_from(src) {
        return *full;
    }
    let mut b = [0f32; LANES];
    b[..src.len()].copy_from_slice(src);
    b
}

#[inline(always)]
fn store(dst: &mut [f32], b: &Block) {
    if let Ok(full) = <&mut Block>::try_from(&mut *dst) {
        *full = *b;
        return;
    }
    let n = dst.len();
    dst.copy_from_slice(&b[..n]);
}

/// Forward over `rows` rows: `gates` (`[rows, 4H]`, pre-activations i, f, g, o) become
/// activations; `c` and `h` (`[rows, H]`) become the new states.
#[inline(always)]
fn forward_generic(gates: &mut [f32], c: &mut [f32], h: &mut [f32], hidden: usize) {
    for ((g, c), h) in gates.chunks_exact_mut(4 * hidden).zip(c.chunks_exact_mut(hidden)).zip(h.chunks_exact_mut(hidden)) {
        for j in (0..hidden).step_by(LANES) {
            let span = j..(j + LANES).min(hidden);
            let at = |gate: usize| gate * hidden + span.start..gate * hidden + span.end;
            let (mut i, mut f, mut cand, mut o) = (load(&g[at(0)]), load(&g[at(1)]), load(&g[at(2)]), load(&g[at(3)]));
            let mut cb = load(&c[span.clone()]);
            let mut hb = [0f32; LANES];
            for k in 0..LANES {
                i[k] = sigmoid(i[k]);
                f[k] = sigmoid(f[k]);
                cand[k] = tanh(cand[k]);
                o[k] = sigmoid(o[k]);
                cb[k] = f[k] * cb[k] + i[k] * cand[k];
                hb[k] = o[k] * tanh(cb[k]);
            }
            store(&mut g[at(0)], &i);
            store(&mut g[at(1)], &f);
            store(&mut g[at(2)], &cand);
            store(&mut g[at(3)], &o);
            store(&mut c[span.clone()], &cb);
            store(&mut h[span], &hb);
        }
    }
}

/// Backward over `rows` rows: from activated `gates`, cell states `cells` (after the step)
/// and `prev_cells` (before), and the incoming `dh`, `dc`, writes the pre-activation gate
/// gradients into `d_gates` and replaces `dc` with the gradient w.r.t. the previous cell.
#[inline(always)]
fn backward_generic(
    gates: &[f32],
    cells: &[f32],
    prev_cells: &[f32],
    dh: &[f32],
    dc: &mut [f32],
    d_gates: &mut [f32],
    hidden: usize,
) {
    let rows = gates.chunks_exact(4 * hidden).zip(d_gates.chunks_exact_mut(4 * hidden));
    for (r, (g, dg)) in rows.enumerate() {
        for j in (0..hidden).step_by(LANES) {
            let span = j..(j + LANES).min(hidden);
            let row = r * hidden + span.start..r * hidden + span.end;
            let at = |gate: usize| gate * hidden + span.start..gate * hidden + span.end;
            let (i, f, cand, o) = (load(&g[at(0)]), load(&g[at(1)]), load(&g[at(2)]), load(&g[at(3)]));
            let (cb, prev, dhb) = (load(&cells[row.clone()]), load(&prev_cells[row.clone()]), load(&dh[row.clone()]));
            let mut dcb = load(&dc[row.clone()]);
            let (mut di, mut df, mut dg_, mut do_) = ([0f32; LANES], [0f32; LANES], [0f32; LANES], [0f32; LANES]);
            for k in 0..LANES {
                let tc = tanh(cb[k]);
                let dcv = dcb[k] + dhb[k] * o[k] * (1.0 - tc * tc);
                di[k] = dcv * cand[k] * i[k] * (1.0 - i[k]);
                df[k] = dcv * prev[k] * f[k] * (1.0 - f[k]);
                dg_[k] = dcv * i[k] * (1.0 - cand[k] * cand[k]);
                do_[k] = dhb[k] * tc * o[k] * (1.0 - o[k]);
                dcb[k] = dcv * f[k];
            }
            store(&mut dg[at(0)], &di);
            store(&mut dg[at(1)], &df);
            store(&mut dg[at(2)], &dg_);
            store(&mut dg[at(3)], &do_);
            store(&mut dc[row], &dcb);
        }
    }
}

dispatch!(
    /// See [`forward_generic`].
    pub fn forward = forward_generic(gates: &mut [f32], c: &mut [f32], h: &mut [f32], hidden: usize)
);
dispatch!(
    /// See [`backward_generic`].
    pub fn backward = backward_generic(gates: &[f32], cells: &[f32], prev_cells: &[f32], dh: &[f32], dc: &mut [f32], d_gates: &mut [f32], hidden: usize)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_functions_match_std() {
        let mut worst = 0f32;
        for k in -20000..=20000 {
            let x = k as f32 * 0.001;
            worst = worst.max((sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs());
            worst = worst.max((tanh(x) - x.tanh()).abs());
        }
        assert!(worst < 1e-6, "max abs error {worst}");
        assert!(sigmoid(-1000.0) < 1e-30);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert!((tanh(50.0) - 1.0).abs() < 1e-7 && (tanh(-50.0) + 1.0).abs() < 1e-7);
    }
}
