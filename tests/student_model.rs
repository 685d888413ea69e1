//! The Bi-LSTM student: gradients against finite differences, padding invariance, and the
//! cached inference path against the plain graph.

use dfdx::prelude::*;
use distill::config::PairFeatures;
use distill::models::bilstm::{BiLstmStudent, StudentInput, StudentShape, TokenBatch};
use distill::ops::dropout::DropoutRng;
use distill::ops::packed::Precision;
use distill::loss::mean_cross_entropy;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn tiny(pair: Option<PairFeatures>) -> BiLstmStudent {
    let shape = StudentShape {
        vocab_size: 12,
        embedding_dim: 5,
        hidden_size: 4,
        fc_size: 3,
        num_labels: 2,
        pair_features: pair,
    };
    let mut model = BiLstmStudent::new(shape, 0.0, &Cpu::seed_from_u64(3), &mut StdRng::seed_from_u64(3));
    // Larger weights than the default init, so every path carries a visible gradient.
    for (_, mut p) in model.params_mut() {
        let v: Vec<f32> = p.values().iter().map(|x| x * 3.0).collect();
        p.set_values(&v);
    }
    model
}

fn input(seqs: &[Vec<u32>], examples: usize) -> StudentInput {
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    StudentInput { tokens: TokenBatch::new(&refs, 0), examples }
}

fn loss_of(model: &BiLstmStudent, input: &StudentInput, labels: &[usize]) -> f64 {
    mean_cross_entropy(&model.predict_logits_uncached(input), labels, 2)
}

fn gradient_check(pair: Option<PairFeatures>) {
    let mut model = tiny(pair);
    let seqs = vec![vec![3, 5, 7, 2], vec![4, 1], vec![9, 10, 11], vec![6, 6, 8], vec![2, 3], vec![1, 4, 7, 9]];
    let (examples, labels) = if pair.is_some() { (3, vec![1, 0, 1]) } else { (6, vec![1, 0, 1, 1, 0, 0]) };
    let input = input(&seqs, examples);

    let (logits, embedding) = model.forward_train(&input, &DropoutRng::new(0));
    let mut target = vec![0f32; examples * 2];
    for (r, &l) in labels.iter().enumerate() {
        target[r * 2 + l] = 1.0;
    }
    let target = Cpu::default().tensor_from_vec(target, (examples, 2));
    let mut grads = cross_entropy_with_logits_loss(logits, target).backward();
    // The embedding's gradient comes as the rows the batch used; the check needs all of them.
    let (vocab, dim) = (model.shape.vocab_size, model.shape.embedding_dim);
    let embedding_grad = embedding.row_grads(&grads).to_dense(vocab, dim);
    let analytic: Vec<(String, Vec<f32>)> = model
        .params_mut()
        .into_iter()
        .map(|(name, p)| {
            let grad = if name == "embedder.weight" { embedding_grad.clone() } else { p.grad(&mut grads).to_vec() };
            (name, grad)
        })
        .collect();

    let eps = 1e-2f32;
    let mut checked = 0;
    let mut nonzero = 0;
    for (k, (name, grad)) in analytic.iter().enumerate() {
        let n = grad.len();
        for idx in (0..n).step_by(1 + n / 40) {
            let perturbed = |delta: f32, model: &mut BiLstmStudent| {
                let mut params = model.params_mut();
                let mut v = params[k].1.values();
                v[idx] += delta;
                params[k].1.set_values(&v);
            };
            perturbed(eps, &mut model);
            let plus = loss_of(&model, &input, &labels);
            perturbed(-2.0 * eps, &mut model);
            let minus = loss_of(&model, &input, &labels);
            perturbed(eps, &mut model);
            let numeric = (plus - minus) / (2.0 * eps as f64);
            let a = grad[idx] as f64;
            assert!(
                (numeric - a).abs() <= 2e-3 + 2e-2 * a.abs().max(numeric.abs()),
                "{name}[{idx}]: analytic {a:.6}, numeric {numeric:.6}"
            );
            checked += 1;
            nonzero += (a.abs() > 1e-4) as usize;
        }
    }
    assert!(checked > 100, "checked only {checked} entries");
    assert!(nonzero > checked / 3, "too few non-zero gradients ({nonzero} of {checked}) to mean anything");
}

#[test]
fn gradients_match_finite_differences_single() {
    gradient_check(None);
}

#[test]
fn gradients_match_finite_differences_pairs() {
    gradient_check(Some(PairFeatures::Tang));
    gradient_check(Some(PairFeatures::Seed));
}

#[test]
fn padding_does_not_change_the_result() {
    let model = tiny(None);
    let short = vec![3u32, 5, 7];
    let alone = model.predict_logits_uncached(&input(std::slice::from_ref(&short), 1));
    let long = vec![1u32, 2, 4, 6, 8, 10, 11, 9];
    let padded = model.predict_logits_uncached(&input(&[long.clone(), short.clone(), long], 3));
    for j in 0..2 {
        assert!((alone[j] - padded[2 + j]).abs() < 1e-6, "{alone:?} vs {padded:?}");
    }
    // Nor does the order of rows in the batch.
    let seqs = vec![vec![3u32, 5], vec![1, 2, 4, 6, 8], vec![9, 10, 11]];
    let reordered = vec![seqs[2].clone(), seqs[0].clone(), seqs[1].clone()];
    let a = model.predict_logits_uncached(&input(&seqs, 3));
    let b = model.predict_logits_uncached(&input(&reordered, 3));
    for (row_a, row_b) in [(0, 1), (1, 2), (2, 0)] {
        for j in 0..2 {
            assert!((a[row_a * 2 + j] - b[row_b * 2 + j]).abs() < 1e-6);
        }
    }
}

#[test]
fn cached_inference_matches_the_graph() {
    let model = tiny(Some(PairFeatures::Tang));
    let seqs = vec![vec![3, 5, 7, 2], vec![4, 1], vec![9, 10, 11], vec![6, 6, 8]];
    let x = input(&seqs, 2);
    let plain = model.predict_logits_uncached(&x);
    let cached_first = model.predict_logits(&x);
    let cached_again = model.predict_logits(&x);
    for ((a, b), c) in plain.iter().zip(&cached_first).zip(&cached_again) {
        assert!((a - b).abs() < 1e-5 && (a - c).abs() < 1e-5, "{plain:?} {cached_first:?}");
    }
}

/// `distill predict --precision int8`: the recurrent product in INT8 stays close to FP32 on
/// a student of realistic width (the error is the weights' and hidden states' rounding), is
/// really a different computation, and switching back gives the FP32 result exactly.
#[test]
fn int8_inference_stays_close_to_f32() {
    let shape = StudentShape { vocab_size: 200, embedding_dim: 16, hidden_size: 64, fc_size: 32, num_labels: 2, pair_features: None };
    let mut model = BiLstmStudent::new(shape, 0.0, &Cpu::seed_from_u64(5), &mut StdRng::seed_from_u64(5));
    let seqs: Vec<Vec<u32>> = (0..40).map(|r| (0..5 + r % 23).map(|t| ((r * 31 + t * 17) % 199 + 1) as u32).collect()).collect();
    let x = input(&seqs, seqs.len());
    let f32_logits = model.predict_logits(&x);
    model.set_inference_precision(Precision::Int8);
    let int8_logits = model.predict_logits(&x);
    let scale = f32_logits.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = f32_logits.iter().zip(&int8_logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst > 0.0, "INT8 gave FP32's logits bit for bit: the INT8 path did not run");
    assert!(worst < 0.02 * scale, "INT8 logits differ by {worst} (largest logit {scale})");
    model.set_inference_precision(Precision::F32);
    assert_eq!(model.predict_logits(&x), f32_logits);
}

#[test]
fn checkpoint_round_trips() {
    let mut model = tiny(Some(PairFeatures::Seed));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    model.save(&path).unwrap();
    let loaded = BiLstmStudent::load(&path, &Cpu::default()).unwrap();
    let x = input(&[vec![3, 5, 7], vec![4, 1]], 1);
    assert_eq!(model.predict_logits_uncached(&x), loaded.predict_logits_uncached(&x));
    assert_eq!(loaded.shape, model.shape);
}
