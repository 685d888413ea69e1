//! Dropout drawing from a random stream the trainer owns, so that its position can be saved
//! in a checkpoint and a resumed run draws the masks an uninterrupted one would.
//!
//! dfdx's `Tensor::dropout` draws from the `Cpu` device's private `StdRng`, whose position
//! cannot be read back. [`DropoutRng`] is the same generator (ChaCha12, seeded the same way,
//! so seeds give the masks they gave before) with a readable position, and [`dropout`] is
//! dfdx's kernel, bit for bit, taking its per-call seed from it.

use std::sync::{Arc, Mutex};

use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
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

/// Zeroes each value with probability `p` and scales the rest by 1/(1 − p), as dfdx's
/// `dropout` does (same mask for the same seed, same rounding), with the seed drawn from `rng`.
pub fn dropout<T: Tape<f32, Cpu>>(x: Matrix<T>, p: f32, rng: &DropoutRng) -> Matrix<T> {
    let seed = rng.next_seed();
    let prob = p as f64;
    let (x, mut tape) = x.split_tape();
    let values = crate::models::layers::contiguous_values(&x);
    let divisor = (1.0 - prob) as f32;
    let mut mask_rng = StdRng::seed_from_u64(seed);
    let bernoulli = Bernoulli::new(prob).expect("dropout probability in [0, 1]");
    let out: Vec<f32> = values.iter().map(|&v| if bernoulli.sample(&mut mask_rng) { 0.0 } else { v / divisor }).collect();
    let out = x.device().tensor_from_vec(out, *x.shape());
    if !T::OWNS_TAPE {
        return out.put_tape(tape);
    }
    let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
    tape.add_backward_op(move |grads| {
        let d_out = grads.get_or_alloc_mut(&out_ghost)?.to_vec();
        let d_x = grads.get_or_alloc_mut(&x_ghost)?;
        // The mask again from the same seed, instead of keeping it.
        let mut mask_rng = StdRng::seed_from_u64(seed);
        let scale = (1.0 - prob).recip() as f32;
        for (g, d) in d_x.iter_mut().zip(&d_out) {
            *g += if bernoulli.sample(&mut mask_rng) { 0.0 } else { scale } * d;
        }
        Ok(())
    });
    out.put_tape(tape)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let dev = Cpu::seed_from_u64(7);
        let ours = DropoutRng::new(7);
        let x: Matrix = dev.tensor_from_vec((0..60).map(|i| i as f32 * 0.37 - 9.0).collect(), (6, 10));
        let theirs = x.leaky_trace().dropout(0.1f32);
        let mine = dropout(x.leaky_trace(), 0.1, &ours);
        assert_eq!(mine.as_vec(), theirs.as_vec(), "same mask and rounding");
        let weights: Matrix = dev.tensor_from_vec((0..60).map(|i| (i % 7) as f32 - 3.0).collect(), (6, 10));
        let g_theirs = (theirs * weights.clone()).sum().backward();
        let g_mine = (mine * weights).sum().backward();
        assert_eq!(g_mine.get(&x).as_vec(), g_theirs.get(&x).as_vec(), "same gradient");
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
