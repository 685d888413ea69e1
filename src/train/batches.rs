//! The order of training examples in an epoch.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Batches per sorting pool: large enough that batches are nearly uniform in length,
/// small enough that batch composition stays random.
const BUCKET_POOL: usize = 50;

/// Shuffled batches of example indices for one epoch.
pub fn shuffled_batches(n: usize, batch_size: usize, rng: &mut StdRng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    order.chunks(batch_size).map(|c| c.to_vec()).collect()
}

/// One epoch of length-bucketed batches: shuffle, sort pools of `BUCKET_POOL` batches by
/// length, cut them into batches, shuffle the batches.
pub fn bucketed_batches(lengths: &[usize], batch_size: usize, rng: &mut StdRng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(rng);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for pool in order.chunks_mut(batch_size * BUCKET_POOL) {
        pool.sort_by_key(|&i| lengths[i]);
        batches.extend(pool.chunks(batch_size).map(|c| c.to_vec()));
    }
    batches.shuffle(rng);
    batches
}
