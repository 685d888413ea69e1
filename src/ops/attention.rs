//! Scaled dot-product attention over all heads as one dfdx tape node.
//!
//! Written by hand because dfdx's version of the same graph (reshape, permute, batched
//! matmul, broadcast mask, softmax, dropout, permute back) copies every activation several
//! times and runs the softmax on one thread. Here each (example, head) pair is one rayon task
//! doing small GEMMs on its own rows; the backward pass is the textbook one.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::dropout::DropoutRng;
use super::Matrix;
use super::matmul::{matmul, MatRef};
use super::simd::exp_fast;

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Copies head `h` of example `b` out of a `[batch·seq, hidden]` matrix.
    fn gather_head(&self, m: &[f32], b: usize, h: usize) -> Vec<f32> {
        let (s, d, hidden) = (self.seq, self.head_dim, self.hidden());
        let mut out = Vec::with_capacity(s * d);
        for t in 0..s {
            let row = (b * s + t) * hidden + h * d;
            out.extend_from_slice(&m[row..row + d]);
        }
        out
    }

    /// Writes (adds) a head's `[seq, head_dim]` block back into `[batch·seq, hidden]`.
    fn scatter_head(&self, dst: &mut [f32], src: &[f32], b: usize, h: usize, add: bool) {
        let (s, d, hidden) = (self.seq, self.head_dim, self.hidden());
        for t in 0..s {
            let row = (b * s + t) * hidden + h * d;
            let (to, from) = (&mut dst[row..row + d], &src[t * d..(t + 1) * d]);
            if add {
                to.iter_mut().zip(from).for_each(|(a, b)| *a += b);
            } else {
                to.copy_from_slice(from);
            }
        }
    }
}

/// `softmax(q·kᵀ/√d + mask)·v` per head, with dropout `(p, masks' stream)` on the attention
/// probabilities.
/// `q`, `k`, `v` are `[batch·seq, hidden]` (heads side by side, as HF lays them out);
/// `mask` is `[batch, seq]`, added to every query row (0 = attend, -1e9 = padding).
pub fn attention<T: Tape<f32, Cpu> + Merge<T>>(
    q: Matrix<T>,
    k: Matrix<T>,
    v: Matrix<T>,
    mask: &[f32],
    shape: AttentionShape,
    dropout: Option<(f32, &DropoutRng)>,
) -> Matrix<T> {
    let AttentionShape { batch, seq, heads, head_dim } = shape;
    let hidden = shape.hidden();
    assert_eq!(q.shape(), &(batch * seq, hidden), "attention: q has the wrong shape");
    assert_eq!(mask.len(), batch * seq, "attention: mask has the wrong shape");
    let (q, tape_q) = q.split_tape();
    let (k, tape_k) = k.split_tape();
    let (v, tape_v) = v.split_tape();
    let mut tape = tape_q.merge(tape_k).merge(tape_v);
    let dev = q.device().clone();
    let (qs, ks, vs) = (crate::models::layers::contiguous_values(&q), crate::models::layers::contiguous_values(&k), crate::models::layers::contiguous_values(&v));
    // Dropout keeps a probability with chance 1 − p and scales it by 1/(1 − p).
    let keep_scale: Option<Vec<f32>> = dropout.map(|(p, rng)| {
        rng.uniform(batch * heads * seq * seq).into_iter().map(|u| if u < p { 0.0 } else { 1.0 / (1.0 - p) }).collect()
    });
    let (out, probs) = attention_values(&qs, &ks, &vs, mask, shape, keep_scale.as_deref());
    let scale = 1.0 / (head_dim as f32).sqrt();
    let block = seq * seq;
    let out = dev.tensor_from_vec(out, (batch * seq, hidden));
    if !T::OWNS_TAPE {
        return out.put_tape(tape);
    }

    let (q_ghost, k_ghost, v_ghost, out_ghost) = (q.ghost(), k.ghost(), v.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        let d_out = grads.get_or_alloc_mut(&out_ghost)?.to_vec();
        let per_head: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..batch * heads)
            .into_par_iter()
            .map(|task| {
                let (b, h) = (task / heads, task % heads);
                let (qh, kh, vh) = (shape.gather_head(&qs, b, h), shape.gather_head(&ks, b, h), shape.gather_head(&vs, b, h));
                let d_context = shape.gather_head(&d_out, b, h);
                let p = &probs[task];
                let keep = keep_scale.as_ref().map(|k| &k[task * block..(task + 1) * block]);
                // context = (P ∘ keep) · V
                let dropped: Vec<f32> = match keep {
                    Some(keep) => p.iter().zip(keep).map(|(p, s)| p * s).collect(),
                    None => p.clone(),
                };
                let mut d_v = vec![0f32; seq * head_dim];
                matmul(&mut d_v, MatRef::new(&dropped, seq, seq).t(), MatRef::new(&d_context, seq, head_dim), false, 1);
                let mut d_p = vec![0f32; block];
                matmul(&mut d_p, MatRef::new(&d_context, seq, head_dim), MatRef::new(&vh, seq, head_dim).t(), false, 1);
                if let Some(keep) = keep {
                    d_p.iter_mut().zip(keep).for_each(|(d, s)| *d *= s);
                }
                // Softmax backward, folded with the 1/√d scale: dS = P ∘ (dP − Σ dP∘P) / √d.
                for (d_row, p_row) in d_p.chunks_exact_mut(seq).zip(p.chunks_exact(seq)) {
                    let dot: f32 = d_row.iter().zip(p_row).map(|(d, p)| d * p).sum();
                    d_row.iter_mut().zip(p_row).for_each(|(d, p)| *d = p * (*d - dot) * scale);
                }
                let mut d_q = vec![0f32; seq * head_dim];
                matmul(&mut d_q, MatRef::new(&d_p, seq, seq), MatRef::new(&kh, seq, head_dim), false, 1);
                let mut d_k = vec![0f32; seq * head_dim];
                matmul(&mut d_k, MatRef::new(&d_p, seq, seq).t(), MatRef::new(&qh, seq, head_dim), false, 1);
                (d_q, d_k, d_v)
            })
            .collect();
        for (which, ghost) in [(0, &q_ghost), (1, &k_ghost), (2, &v_ghost)] {
            let grad = grads.get_or_alloc_mut(ghost)?;
            for (task, parts) in per_head.iter().enumerate() {
                let part = match which {
                    0 => &parts.0,
                    1 => &parts.1,
                    _ => &parts.2,
                };
                shape.scatter_head(grad, part, task / heads, task % heads, true);
            }
        }
        Ok(())
    });
    out.put_tape(tape)
}

/// The forward pass on plain values: context `[batch·seq, hidden]` and each (example, head)'s
/// attention probabilities (before dropout). `keep_scale` (`[batch·heads·seq·seq]`) is the
/// dropout mask, already scaled; `None` at inference.
pub fn attention_values(
    qs: &[f32],
    ks: &[f32],
    vs: &[f32],
    mask: &[f32],
    shape: AttentionShape,
    keep_scale: Option<&[f32]>,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let AttentionShape { batch, seq, heads, head_dim } = shape;
    let hidden = shape.hidden();
    let scale = 1.0 / (head_dim as f32).sqrt();
    let block = seq * seq;

    // Per (example, head): probabilities [seq, seq] and context [seq, head_dim].
    let results: Vec<(Vec<f32>, Vec<f32>)> = (0..batch * heads)
        .into_par_iter()
        .map(|task| {
            let (b, h) = (task / heads, task % heads);
            let (qh, kh, vh) = (shape.gather_head(qs, b, h), shape.gather_head(ks, b, h), shape.gather_head(vs, b, h));
            let mut probs = vec![0f32; block];
            matmul(&mut probs, MatRef::new(&qh, seq, head_dim), MatRef::new(&kh, seq, head_dim).t(), false, 1);
            let row_mask = &mask[b * seq..(b + 1) * seq];
            for row in probs.chunks_exact_mut(seq) {
                let mut max = f32::NEG_INFINITY;
                for (x, m) in row.iter_mut().zip(row_mask) {
                    *x = *x * scale + m;
                    max = max.max(*x);
                }
                let mut sum = 0f32;
                for x in row.iter_mut() {
                    *x = exp_fast(*x - max);
                    sum += *x;
                }
                row.iter_mut().for_each(|x| *x /= sum);
            }
            let mut context = vec![0f32; seq * head_dim];
            match keep_scale {
                Some(keep) => {
                    let dropped: Vec<f32> =
                        probs.iter().zip(&keep[task * block..(task + 1) * block]).map(|(p, s)| p * s).collect();
                    matmul(&mut context, MatRef::new(&dropped, seq, seq), MatRef::new(&vh, seq, head_dim), false, 1);
                }
                None => matmul(&mut context, MatRef::new(&probs, seq, seq), MatRef::new(&vh, seq, head_dim), false, 1),
            }
            (probs, context)
        })
        .collect();
    let mut out = vec![0f32; batch * seq * hidden];
    for (task, (_, context)) in results.iter().enumerate() {
        shape.scatter_head(&mut out, context, task / heads, task % heads, false);
    }
    (out, results.into_iter().map(|(p, _)| p).collect())
}
