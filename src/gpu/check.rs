//! `distill gpu-check`'s parity half: the GPU student against the CPU one from the same
//! weights (dropout 0: the two devices draw different masks). Also run by
//! `tests/gpu_student.rs` wherever a GPU is present.

use anyhow::{ensure, Result};
use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::student::{BatchTargets, GpuStudent};
use super::Gpu;
use crate::config::{OptimizerName, PairFeatures};
use crate::models::bilstm::{BiLstmStudent, StudentInput, StudentShape, TokenBatch};
use crate::optim::{Optimizer, OptimizerConfig};
use crate::train::one_hot;

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
        let mut cpu = BiLstmStudent::new(shape, 0.0, &dev, &mut rng);
        let cfg = OptimizerConfig::new(optimizer, lr);
        let mut gpu = GpuStudent::new(Gpu::new()?, &mut cpu, cfg, 0)?;
        // Pairs: 18 texts = 9 (a, b) examples; single texts: 9 examples.
        let (texts, examples) = if pair.is_some() { (18, 9) } else { (9, 9) };
        let probe = random_batch(&mut rng, texts, examples, vocab);
        let before = max_difference(&gpu.predict_logits(&probe)?, &cpu.predict_logits(&probe));
        ensure!(before <= FORWARD_TOLERANCE, "{optimizer:?}: logits differ by {before} before training (tolerance {FORWARD_TOLERANCE})");

        let mut opt = Optimizer::new(cfg);
        let trainable = vec![true; 13];
        let mut worst_loss = 0f32;
        for step in 0..5 {
            let batch = random_batch(&mut rng, texts, examples, vocab);
            let labels: Vec<usize> = (0..batch.examples).map(|i| (i + step) % 2).collect();
            let loss = cross_entropy_with_logits_loss(cpu.forward_train(&batch), one_hot(&dev, &labels, 2));
            let cpu_loss = loss.array();
            let mut grads = loss.backward();
            let mut params = cpu.params_mut();
            let rows = batch.tokens.distinct_ids();
            opt.step(&mut params, &trainable, &[Some(rows.as_slice())], &mut grads);
            drop(params);
            let gpu_loss = gpu.train_step(&batch, &labels, &BatchTargets::Gold, 0.0, true)?;
            worst_loss = worst_loss.max((gpu_loss - cpu_loss).abs());
        }
        let after = max_difference(&gpu.predict_logits(&probe)?, &cpu.predict_logits(&probe));
        ensure!(
            after <= TRAINED_TOLERANCE && worst_loss <= TRAINED_TOLERANCE,
            "{optimizer:?}: after 5 steps logits differ by {after}, losses by {worst_loss} (tolerance {TRAINED_TOLERANCE})"
        );
        report.push(format!(
            "student parity on {} ({optimizer:?}, pair features {pair:?}): logits max |GPU − CPU| {before:.2e} before, {after:.2e} after 5 steps; losses within {worst_loss:.2e}",
            gpu.gpu().name()
        ));
    }
    Ok(report)
}

/// Writes an HF BERT dir with random weights (normal, std 0.02; LayerNorm 1 and 0) of
/// all-MiniLM-L6-v2's shape: 6 layers, hidden 384, 12 heads, FFN 1536, vocab 30,522. The lent
/// GPU machines cannot reach a model hub, and speed and parity do not depend on the values.
pub fn write_random_minilm(dir: &std::path::Path) -> Result<()> {
    let (vocab, hidden, layers, ffn, positions) = (30522usize, 384usize, 6usize, 1536usize, 512usize);
    let config = serde_json::json!({
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": vocab, "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": 12, "intermediate_size": ffn,
        "max_position_embeddings": positions, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02
    });
    let mut rng = StdRng::seed_from_u64(0);
    let normal = rand_distr::Normal::new(0f32, 0.02).expect("valid std");
    let mut tensors: Vec<crate::models::layers::NamedTensor> = Vec::new();
    let mut add = |name: String, dims: Vec<usize>, fill: Option<f32>| {
        let n: usize = dims.iter().product();
        let bytes = (0..n)
            .flat_map(|_| fill.unwrap_or_else(|| rand_distr::Distribution::sample(&normal, &mut rng)).to_le_bytes())
            .collect();
        tensors.push((name, safetensors::Dtype::F32, dims, bytes));
    };
    let linear = |add: &mut dyn FnMut(String, Vec<usize>, Option<f32>), name: String, inputs: usize, outputs: usize| {
        add(format!("{name}.weight"), vec![outputs, inputs], None);
        add(format!("{name}.bias"), vec![outputs], Some(0.0));
    };
    let layer_norm = |add: &mut dyn FnMut(String, Vec<usize>, Option<f32>), name: String| {
        add(format!("{name}.weight"), vec![hidden], Some(1.0));
        add(format!("{name}.bias"), vec![hidden], Some(0.0));
    };
    add("embeddings.word_embeddings.weight".into(), vec![vocab, hidden], None);
    add("embeddings.position_embeddings.weight".into(), vec![positions, hidden], None);
    add("embeddings.token_type_embeddings.weight".into(), vec![2, hidden], None);
    layer_norm(&mut add, "embeddings.LayerNorm".into());
    for i in 0..layers {
        let p = format!("encoder.layer.{i}");
        for part in ["query", "key", "value"] {
            linear(&mut add, format!("{p}.attention.self.{part}"), hidden, hidden);
        }
        linear(&mut add, format!("{p}.attention.output.dense"), hidden, hidden);
        layer_norm(&mut add, format!("{p}.attention.output.LayerNorm"));
        linear(&mut add, format!("{p}.intermediate.dense"), hidden, ffn);
        linear(&mut add, format!("{p}.output.dense"), ffn, hidden);
        layer_norm(&mut add, format!("{p}.output.LayerNorm"));
    }
    linear(&mut add, "pooler.dense".into(), hidden, hidden);
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)?)?;
    std::fs::write(dir.join("model.safetensors"), crate::models::layers::serialize_tensors(&tensors, None)?)?;
    Ok(())
}

/// Teacher logits, CPU vs GPU, on a BERT dir (varied lengths, so padding and the mask count).
pub fn teacher_parity(dir: &std::path::Path) -> Result<String> {
    use crate::models::bert::{BertForSequenceClassification, BertInput};
    let dev = Cpu::seed_from_u64(0);
    let mut rng = StdRng::seed_from_u64(3);
    let model = BertForSequenceClassification::load(dir, 2, &dev, &mut rng)?;
    let gpu = super::bert::GpuBert::new(Gpu::new()?, &model)?;
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
    Ok(format!("teacher parity on {} ({}): logits max |GPU − CPU| {difference:.2e} over 16 texts of 2–39 tokens", gpu.gpu().name(), dir.display()))
}
