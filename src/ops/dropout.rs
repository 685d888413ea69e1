//! Dropout drawing from a random stream the trainer owns, so that its position can be saved
//! in a checkpoint and a resumed run draws the masks an uninterrupted one would.
//!
//! dfdx's `Tensor::dropout` draws from the `Cpu` device's private `StdRng`, whose position
//! cannot be read back. [`DropoutRng`] is the same generator (ChaCha12, seeded the same way,
//! so seeds give the masks they gave before) with a readable position, and [`dropout`] is
//! dfdx's kernel, bit for bit, taking its per-call seed from it.

use std::sync::{Arc, Mutex};

use dfdx::prelude::*;
use rand::{Rng, RngCore, SeedableRng};
use rayon::prelude::*;
use rand_chacha::ChaCha12Rng;
use rand_distr::{Bernoulli, Distribution, Standard};

use super::Matrix;

/// The random stream of a training run's dropout masks. Clones share the stream.
#[derive(Clone, Debug)]
pub struct DropoutRng(Arc<Mutex<ChaCha12Rng>>);

/// Where a [`DropoutRng`] stands: its seed and how many 32-bit words it has produced.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RngPosition {
    pub seed: [u8; 32],
    /// A `u128` as text (JSON numbers stop at 64 bits).
    pub word: String,
}

impl DropoutRng {
    /// The stream `Cpu::seed_from_u64(seed)` draws dropout from.
    pub fn new(seed: u64) -> DropoutRng {
        DropoutRng(Arc::new(Mutex::new(ChaCha12Rng::seed_from_u64(seed))))
    }

    fn with<R>(&self, f: impl FnOnce(&mut ChaCha12Rng) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A seed for one dropout call (dfdx's `random_u64`).
    pub fn next_seed(&self) -> u64 {
        self.with(|rng| rng.next_u64())
    }

    /// `n` samples of U[0, 1) (dfdx's `sample_uniform_like`).
    pub fn uniform(&self, n: usize) -> Vec<f32> {
        self.with(|rng| (0..n).map(|_| rng.sample::<f32, _>(Standard)).collect())
    }

    pub fn position(&self) -> RngPosition {
        self.with(|rng| RngPosition { seed: rng.get_seed(), word: rng.get_word_pos().to_string() })
    }

    /// Continues the stream from `position`.
    pub fn restore(&self, position: &RngPosition) -> anyhow::Result<()> {
        let word: u128 = position.word.parse().map_err(|_| anyhow::anyhow!("not a stream position: {:?}", position.word))?;
        self.with(|rng| {
            *rng = ChaCha12Rng::from_seed(position.seed);
            rng.set_word_pos(word);
        });
        Ok(())
    }
}

/// Values per parallel chunk of a dropout mask.
const MASK_CHUNK: usize = 1 << 14;

/// Which of `n` values one dropout call zeroes: one Bernoulli(`p`) draw per value from
/// `StdRng::seed_from_u64(seed)`, the draws dfdx's kernel makes one after another. Each draw
/// takes one `u64`, two 32-bit words of the ChaCha stream, so a chunk seeks to word
/// `2 · first value` and the chunks are drawn in parallel with the same result.
fn dropped(seed: u64, p: f64, n: usize) -> Vec<bool> {
    let bernoulli = Bernoulli::new(p).expect("dropout probability in [0, 1]");
    let mut mask = vec![false; n];
    mask.par_chunks_mut(MASK_CHUNK).enumerate().for_each(|(c, chunk)| {
        // StdRng is ChaCha12 seeded the same way, without a public seek.
        let mut rng = ChaCha12Rng::seed_from_u64(seed);
        rng.set_word_pos(2 * (c * MASK_CHUNK) as u128);
        chunk.iter_mut().for_each(|m| *m = bernoulli.sample(&mut rng));
    });
    mask
}

/// Zeroes each value with probability `p` and scales the rest by 1/(1 − p), as dfdx's
/// `dropout` does (same mask for the same seed, same rounding), with the seed drawn from `rng`.
/// The mask is drawn once, in parallel, and kept for the backward pass.
pub fn dropout<T: Tape<f32, Cpu>>(x: Matrix<T>, p: f32, rng: &DropoutRng) -> Matrix<T> {
    let seed = rng.next_seed();
    let prob = p as f64;
    let (x, mut tape) = x.split_tape();
    let values = crate::models::layers::contiguous_values(&x);
    let divisor = (1.0 - prob) as f32;
    let mask = dropped(seed, prob, values.len());
    let mut out = vec![0f32; values.len()];
    out.par_chunks_mut(MASK_CHUNK).zip(values.par_chunks(MASK_CHUNK)).zip(mask.par_chunks(MASK_CHUNK)).for_each(|((o, v), m)| {
        for ((o, &v), &dropped) in o.iter_mut().zip(v).zip(m) {
            *o = if dropped { 0.0 } else { v / divisor };
        }
    });
    let out = x.device().tensor_from_vec(out, *x.shape());
    if !T::OWNS_TAPE {
        return out.put_tape(tape);
    }
    let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        let d_out = grads.get_or_alloc_mut(&out_ghost)?.to_vec();
        let d_x = grads.get_or_alloc_mut(&x_ghost)?;
        let scale = (1.0 - prob).recip() as f32;
        d_x.par_chunks_mut(MASK_CHUNK).zip(d_out.par_chunks(MASK_CHUNK)).zip(mask.par_chunks(MASK_CHUNK)).for_each(|((g, d), m)| {
            for ((g, d), &dropped) in g.iter_mut().zip(d).zip(m) {
                *g += if dropped { 0.0 } else { scale } * d;
            }
        });
        Ok(())
    });
    out.put_tape(tape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;

    #[test]
    fn masks_drawn_in_parallel_chunks_are_the_sequential_draws() {
        for (seed, p, n) in [(5, 0.4, 2 * MASK_CHUNK + 77), (9, 0.1, MASK_CHUNK), (1, 0.5, 3), (2, 0.0, 100), (3, 1.0, MASK_CHUNK + 1)] {
            let mut rng = StdRng::seed_from_u64(seed);
            let bernoulli = Bernoulli::new(p).unwrap();
            let sequential: Vec<bool> = (0..n).map(|_| bernoulli.sample(&mut rng)).collect();
            assert_eq!(dropped(seed, p, n), sequential, "seed {seed}, p {p}, n {n}");
        }
    }

    #[test]
    fn the_stream_is_the_cpu_devices() {
        // dfdx's Cpu::seed_from_u64 seeds a StdRng; ours must give the same draws.
        let ours = DropoutRng::new(42);
        let mut theirs = StdRng::seed_from_u64(42);
        for _ in 0..5 {
            assert_eq!(ours.next_seed(), theirs.next_u64());
            assert_eq!(ours.uniform(3), (0..3).map(|_| theirs.sample::<f32, _>(Standard)).collect::<Vec<_>>());
        }
    }

    #[test]
    fn dropout_matches_dfdx_forward_and_backward() {
        // A small tensor and one of several mask chunks.
        for (rows, cols) in [(6, 10), (70, 500)] {
            let dev = Cpu::seed_from_u64(7);
            let ours = DropoutRng::new(7);
            let n = rows * cols;
            let x: Matrix = dev.tensor_from_vec((0..n).map(|i| (i % 60) as f32 * 0.37 - 9.0).collect(), (rows, cols));
            let theirs = x.leaky_trace().dropout(0.1f32);
            let mine = dropout(x.leaky_trace(), 0.1, &ours);
            assert_eq!(mine.as_vec(), theirs.as_vec(), "same mask and rounding");
            let weights: Matrix = dev.tensor_from_vec((0..n).map(|i| (i % 7) as f32 - 3.0).collect(), (rows, cols));
            let g_theirs = (theirs * weights.clone()).sum().backward();
            let g_mine = (mine * weights).sum().backward();
            assert_eq!(g_mine.get(&x).as_vec(), g_theirs.get(&x).as_vec(), "same gradient");
        }
    }

    #[test]
    fn a_restored_stream_continues_where_it_stood() {
        let rng = DropoutRng::new(3);
        rng.uniform(5);
        rng.next_seed();
        let at = rng.position();
        let next = (rng.next_seed(), rng.uniform(3));
        let resumed = DropoutRng::new(99);
        resumed.restore(&at).unwrap();
        assert_eq!((resumed.next_seed(), resumed.uniform(3)), next);
    }
}
