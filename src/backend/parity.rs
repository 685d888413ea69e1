//! `distill gpu-check`'s parity half: each model on the GPU backend against the CPU backend
//! from the same weights (dropout 0: the two devices draw different masks). Also run by
//! `tests/gpu_student.rs` wherever a GPU is present.

use anyhow::{ensure, Result};
use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{StudentBackend, TeacherBackend};
use crate::config::{DeviceName, OptimizerName, PairFeatures};
use crate::loss::Targets;
use crate::models::bilstm::{BiLstmStudent, StudentInput, StudentShape, TokenBatch};
use crate::ops::packed::Precision;
use crate::optim::OptimizerConfig;

/// Logits before training may differ by this much (float sums in another order)…
pub const FORWARD_TOLERANCE: f32 = 1e-4;
/// …and after five optimizer steps, which compound the differences.
pub const TRAINED_TOLERANCE: f32 = 2e-3;

fn random_batch(rng: &mut StdRng, texts: usize, examples: usize, vocab: usize) -> StudentInput {
    let seqs: Vec<Vec<u32>> =
        (0..texts).map(|_| (0..rng.gen_range(1..20)).map(|_| rng.gen_range(1..vocab as u32)).collect()).collect();
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    StudentInput { tokens: TokenBatch::new(&refs, 0), examples }
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Forward, then five training steps of Adadelta (sparse embedding rows, single texts) and
/// of Adam (pair features), CPU vs GPU. Returns one line per case; errors past a tolerance.
pub fn student_parity() -> Result<Vec<String>> {
    let mut report = Vec::new();
    for (pair, optimizer, lr) in [(None, OptimizerName::Adadelta, 1.0), (Some(PairFeatures::Seed), OptimizerName::Adam, 1e-3)] {
        let vocab = 500;
        let shape = StudentShape { vocab_size: vocab, embedding_dim: 32, hidden_size: 24, fc_size: 16, num_labels: 2, pair_features: pair };
        let dev = Cpu::seed_from_u64(0);
        let mut rng = StdRng::seed_from_u64(7);
        let model = BiLstmStudent::new(shape, 0.0, &dev, &mut rng);
        let cfg = OptimizerConfig::new(optimizer, lr);
        let mut cpu = StudentBackend::new(model.clone(), cfg, true, DeviceName::Cpu, 0)?;
        let mut gpu = StudentBackend::new(model, cfg, true, DeviceName::Cuda, 0)?;
        // Pairs: 18 texts = 9 (a, b) examples; single texts: 9 examples.
        let (texts, examples) = if pair.is_some() { (18, 9) } else { (9, 9) };
        let probe = random_batch(&mut rng, texts, examples, vocab);
        let before = max_difference(&gpu.predict_logits(&probe)?, &cpu.predict_logits(&probe)?);
        ensure!(before <= FORWARD_TOLERANCE, "{optimizer:?}: logits differ by {before} before training (tolerance {FORWARD_TOLERANCE})");

        let mut worst_loss = 0f64;
        for step in 0..5 {
            let batch = random_batch(&mut rng, texts, examples, vocab);
            let labels: Vec<usize> = (0..batch.examples).map(|i| (i + step) % 2).collect();
            let cpu_loss = cpu.train_step(&batch, &labels, &Targets::Gold, 0.0)?;
            let gpu_loss = gpu.train_step(&batch, &labels, &Targets::Gold, 0.0)?;
            worst_loss = worst_loss.max((gpu_loss - cpu_loss).abs());
        }
        let after = max_difference(&gpu.predict_logits(&probe)?, &cpu.predict_logits(&probe)?);
        ensure!(
            after <= TRAINED_TOLERANCE && worst_loss <= TRAINED_TOLERANCE as f64,
            "{optimizer:?}: after 5 steps logits differ by {after}, losses by {worst_loss} (tolerance {TRAINED_TOLERANCE})"
        );
        report.push(format!(
            "student parity on {} ({optimizer:?}, pair features {pair:?}): logits max |GPU − CPU| {before:.2e} before, {after:.2e} after 5 steps; losses within {worst_loss:.2e}",
            gpu.device_name()
        ));
    }
    Ok(report)
}

/// Writes an HF BERT dir with random weights of all-MiniLM-L6-v2's shape: 6 layers, hidden
/// 384, 12 heads, FFN 1536, vocab 30,522. The lent GPU machines cannot reach a model hub, and
/// speed and parity do not depend on the values.
pub fn write_random_minilm(dir: &std::path::Path) -> Result<()> {
    let config = serde_json::json!({
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": 30522, "hidden_size": 384,
        "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
        "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02
    });
    crate::models::bert::BertModel::write_random(dir, &config, 0)
}

/// Teacher logits, CPU vs GPU, on a BERT dir (varied lengths, so padding and the mask count).
pub fn teacher_parity(dir: &std::path::Path) -> Result<String> {
    use crate::models::bert::{BertForSequenceClassification, BertInput};
    let dev = Cpu::seed_from_u64(0);
    let mut rng = StdRng::seed_from_u64(3);
    let model = BertForSequenceClassification::load(dir, 2, &dev, &mut rng)?;
    let gpu = TeacherBackend::new(&model, DeviceName::Cuda, Precision::F32)?;
    let name = gpu.device_name();
    let vocab = model.bert.config.vocab_size as u32;
    let rows: Vec<(Vec<u32>, Vec<u32>)> = (0..16)
        .map(|_| {
            let len = rng.gen_range(2..40);
            ((0..len).map(|_| rng.gen_range(1..vocab)).collect(), vec![0; len])
        })
        .collect();
    let input = BertInput::new(&rows, 0);
    let difference = max_difference(&gpu.predict_logits(&input)?, &model.predict_logits(&input));
    ensure!(difference <= FORWARD_TOLERANCE, "teacher logits differ by {difference} (tolerance {FORWARD_TOLERANCE})");
    Ok(format!("teacher parity on {name} ({}): logits max |GPU − CPU| {difference:.2e} over 16 texts of 2–39 tokens", dir.display()))
}
