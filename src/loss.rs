//! Losses: the one definition of every training loss (cross-entropy on gold labels; the
//! distillation losses MSE, KL and CE with the α mix of gold cross-entropy), softmax, and the
//! dev-set cross-entropy.
//!
//! [`loss`] is written once, on dfdx tensors. The CPU student differentiates it on its own
//! tape; a device that computes logits elsewhere (the GPU) calls [`loss_and_grad`], which
//! runs the same function on the host over the batch's logits and returns their gradient.
//! A new loss is a new [`DistillLoss`] arm in [`distill_loss`], and every device has it.

use dfdx::prelude::*;

use crate::config::DistillLoss;
use crate::ops::Matrix;

/// The loss of the "distill" stage, from `[distill]`.
#[derive(Debug, Clone, Copy)]
pub struct LossSpec {
    pub kind: DistillLoss,
    pub alpha: f32,
    pub temperature: f32,
}

/// What the student learns from on each training row.
#[derive(Debug, Clone, Copy)]
pub enum Targets<'a> {
    /// Cross-entropy on the gold labels.
    Gold,
    /// The teacher's logits (`rows × labels`, row-major) with a distillation loss.
    Teacher { logits: &'a [f32], loss: LossSpec },
}

impl Targets<'_> {
    /// The targets of the training rows `batch` (teacher logits gathered into `buffer`).
    pub fn gather<'b>(&self, batch: &[usize], classes: usize, buffer: &'b mut Vec<f32>) -> Targets<'b> {
        match *self {
            Targets::Gold => Targets::Gold,
            Targets::Teacher { logits, loss } => {
                buffer.clear();
                buffer.extend(batch.iter().flat_map(|&i| logits[i * classes..(i + 1) * classes].iter().copied()));
                Targets::Teacher { logits: buffer, loss }
            }
        }
    }
}

/// The training loss of a batch: cross-entropy on `labels`, or the distillation loss
/// against the teacher's logits for the same rows.
pub fn loss<T: Tape<f32, Cpu>>(logits: Matrix<T>, labels: &[usize], targets: &Targets) -> Tensor<(), f32, Cpu, T> {
    match targets {
        Targets::Gold => {
            let dev = logits.device().clone();
            let classes = logits.shape().1;
            cross_entropy_with_logits_loss(logits, one_hot(&dev, labels, classes))
        }
        Targets::Teacher { logits: teacher, loss } => distill_loss(logits, teacher, labels, *loss),
    }
}

/// The distillation loss of a batch: `alpha`·CE(gold) + (1 − `alpha`)·`kind`, where `kind`
/// compares the student's logits with the teacher's (`rows × classes`, row-major).
/// Cross-entropy and KL are means over rows, MSE a mean over all elements; KL is on
/// logits / T against softmax(teacher / T) and scaled by T².
pub fn distill_loss<T: Tape<f32, Cpu>>(logits: Matrix<T>, teacher: &[f32], labels: &[usize], spec: LossSpec) -> Tensor<(), f32, Cpu, T> {
    let dev = logits.device().clone();
    let shape = *logits.shape();
    let classes = shape.1;
    // The gold-label term works on a re-taped copy; the tape with the whole forward pass
    // stays with `logits` and is merged back by the final sum.
    let gold = (spec.alpha > 0.0 && spec.kind != DistillLoss::Ce)
        .then(|| cross_entropy_with_logits_loss(logits.retaped::<T>(), one_hot(&dev, labels, classes)));
    let soft = match spec.kind {
        DistillLoss::Ce => return cross_entropy_with_logits_loss(logits, one_hot(&dev, labels, classes)),
        DistillLoss::Mse => mse_loss(logits, dev.tensor_from_vec(teacher.to_vec(), shape)),
        DistillLoss::Kl => {
            let t = spec.temperature;
            // Floored so that KL's log never sees an exact 0.
            let probs: Vec<f32> = teacher.chunks_exact(classes).flat_map(|row| softmax(row, t)).map(|p| p.max(1e-12)).collect();
            kl_div_with_logits_loss(logits / t, dev.tensor_from_vec(probs, shape)) * (t * t)
        }
    };
    match gold {
        None => soft,
        Some(gold) => soft * (1.0 - spec.alpha) + gold * spec.alpha,
    }
}

/// The loss of a batch and its gradient with respect to the logits.
pub struct LossAndGrad {
    pub loss: f32,
    pub d_logits: Vec<f32>,
}

/// [`loss`] on host logits (`rows × classes`, row-major) and its gradient, for devices
/// that run the model elsewhere. A non-finite loss comes back with a zero gradient.
pub fn loss_and_grad(logits: &[f32], labels: &[usize], targets: &Targets, classes: usize) -> LossAndGrad {
    let rows = labels.len();
    assert_eq!(logits.len(), rows * classes, "logits and labels disagree");
    let dev = Cpu::default();
    let leaf: Matrix = dev.tensor_from_vec(logits.to_vec(), (rows, classes));
    let value = loss(leaf.leaky_trace(), labels, targets);
    let loss_value = value.array();
    if !loss_value.is_finite() {
        return LossAndGrad { loss: loss_value, d_logits: vec![0.0; logits.len()] };
    }
    let grads = value.backward();
    LossAndGrad { loss: loss_value, d_logits: grads.get(&leaf).as_vec() }
}

/// softmax(`row` / `temperature`).
pub fn softmax(row: &[f32], temperature: f32) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = row.iter().map(|v| ((v - max) / temperature).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// One-hot targets `[rows, classes]` for `cross_entropy_with_logits_loss`.
pub fn one_hot(dev: &Cpu, labels: &[usize], classes: usize) -> Matrix {
    let mut v = vec![0f32; labels.len() * classes];
    for (row, &l) in labels.iter().enumerate() {
        v[row * classes + l] = 1.0;
    }
    dev.tensor_from_vec(v, (labels.len(), classes))
}

/// Mean softmax cross-entropy of `logits` (`rows × classes`) against gold labels, summed in
/// f64: the dev loss in the reports.
pub fn mean_cross_entropy(logits: &[f32], labels: &[usize], classes: usize) -> f64 {
    let mut total = 0f64;
    for (row, &label) in logits.chunks_exact(classes).zip(labels) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let log_sum = row.iter().map(|&v| ((v as f64) - max).exp()).sum::<f64>().ln() + max;
        total += log_sum - row[label] as f64;
    }
    total / labels.len().max(1) as f64
}
