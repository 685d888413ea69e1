//! The `student` stage: the Bi-LSTM trained alone on gold labels (the paper's "Bi-LSTM" row).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use super::{evaluate, one_hot, load_splits, progress_bar, shuffled_batches, EncodedSet, RunContext};
use crate::config::{expand_path, Experiment};
use crate::data::Task;
use crate::embeddings::load_pretrained;
use crate::metrics::Metrics;
use crate::models::bilstm::{BiLstmStudent, StudentShape};
use crate::optim::{clip_grad_norm, Optimizer, OptimizerConfig};
use crate::report::{git_commit, unix_now, write_atomic, MetricsLog, MetricsRow, ResultRow};
use crate::tokenize::TextEncoder;

/// Eval batches are larger than training ones: no activations are kept.
const EVAL_BATCH: usize = 256;

pub fn train_student(ctx: &RunContext) -> Result<ResultRow> {
    let exp = &ctx.experiment;
    let cfg = exp.student.as_ref().context("the student stage needs a [student] table")?;
    let task = Task::new(exp.task, exp.data.columns.as_ref());
    let (train, dev) = load_splits(exp, &task)?;
    eprintln!("data: {} train, {} dev examples ({:?})", train.examples.len(), dev.examples.len(), task.name);

    let train_texts: Vec<&str> = train
        .examples
        .iter()
        .flat_map(|e| std::iter::once(e.text_a.as_str()).chain(e.text_b.as_deref()))
        .collect();
    let encoder = TextEncoder::from_config(&exp.vocab, &train_texts)?;
    let vocab = encoder.vocab();
    let train_set = EncodedSet::new(&train, &encoder, cfg.max_seq_len);
    let dev_set = EncodedSet::new(&dev, &encoder, cfg.max_seq_len);
    let oov = |s: &EncodedSet| {
        let mut all = s.a.clone();
        all.extend(s.b.clone().unwrap_or_default());
        encoder.coverage(&all).oov_rate()
    };
    eprintln!(
        "vocab: {} tokens ({:?}); OOV rate train {:.2}%, dev {:.2}%",
        vocab.len(),
        exp.vocab.kind,
        100.0 * oov(&train_set),
        100.0 * oov(&dev_set)
    );

    let dev_cpu = Cpu::seed_from_u64(exp.seed);
    let mut rng = StdRng::seed_from_u64(exp.seed);
    let shape = StudentShape {
        vocab_size: vocab.len(),
        embedding_dim: cfg.embedding_dim,
        hidden_size: cfg.hidden_size,
        fc_size: cfg.fc_size(),
        num_labels: task.num_labels(),
        pair_features: task.is_pair().then_some(cfg.pair_features),
    };
    let mut model = BiLstmStudent::new(shape, cfg.dropout as f32, &dev_cpu, &mut rng);
    init_embeddings(exp, &encoder, &mut model, &mut rng)?;
    let num_params = model.num_params();
    eprintln!("student: {num_params} parameters");

    let student_dir = ctx.run_dir.join("student");
    std::fs::create_dir_all(&student_dir)?;
    write_atomic(&student_dir.join("vocab.txt"), vocab.to_text().as_bytes())?;
    let checkpoint = student_dir.join("model.safetensors");
    let mut log = MetricsLog::open(ctx.run_dir.join("metrics.csv"), "student")?;
    let mut optimizer = Optimizer::new(OptimizerConfig::new(cfg.optimizer, cfg.lr));
    let trainable: Vec<bool> =
        model.params_mut().iter().enumerate().map(|(i, _)| i > 0 || cfg.train_embeddings).collect();

    let steps_per_epoch = train_set.len().div_ceil(cfg.batch_size);
    let bar = progress_bar((steps_per_epoch * cfg.epochs) as u64, "student");
    let start = Instant::now();
    let mut train_time = 0f64;
    let mut seen = 0usize;
    let mut best: Option<(usize, Metrics)> = None; // (epoch, dev metrics) of the kept checkpoint
    let mut step = 0usize;
    for epoch in 1..=cfg.epochs {
        let mut epoch_loss = 0f64;
        let mut epoch_batches = 0usize;
        for batch in shuffled_batches(train_set.len(), cfg.batch_size, &mut rng) {
            let t0 = Instant::now();
            let input = train_set.input(&batch, vocab.unk_id);
            let logits = model.forward_train(&input);
            let targets = one_hot(&dev_cpu, &batch.iter().map(|&i| train_set.labels[i]).collect::<Vec<_>>(), shape.num_labels);
            let loss = cross_entropy_with_logits_loss(logits, targets);
            let loss_value = loss.array() as f64;
            if !loss_value.is_finite() {
                bail!("the training loss became {loss_value} at step {step}; lower student.lr or set student.max_grad_norm");
            }
            let mut grads = loss.backward();
            let mut params = model.params_mut();
            if cfg.max_grad_norm > 0.0 {
                clip_grad_norm(&params, &mut grads, cfg.max_grad_norm as f32);
            }
            let rows = input.tokens.distinct_ids();
            optimizer.step(&mut params, &trainable, &[Some(rows.as_slice())], &mut grads);
            drop(params);
            train_time += t0.elapsed().as_secs_f64();
            seen += batch.len();
            step += 1;
            epoch_loss += loss_value;
            epoch_batches += 1;
            bar.inc(1);
            let end_of_epoch = epoch_batches == steps_per_epoch;
            if end_of_epoch || (cfg.eval_every > 0 && step.is_multiple_of(cfg.eval_every)) {
                let train_loss = epoch_loss / epoch_batches as f64;
                let eval = evaluate(&model, &dev_set, vocab.unk_id, EVAL_BATCH);
                let elapsed = start.elapsed().as_secs_f64();
                let row = |split: &str, loss: f64, m: Metrics| MetricsRow {
                    stage: "student".into(),
                    step,
                    epoch,
                    split: split.into(),
                    loss,
                    accuracy: m.accuracy,
                    precision: m.precision,
                    recall: m.recall,
                    f1: m.f1,
                    elapsed_s: elapsed,
                };
                log.push(row("train", train_loss, Default::default()))?;
                log.push(row("dev", eval.loss, eval.metrics))?;
                let improved = best.as_ref().is_none_or(|(_, m)| eval.metrics.accuracy > m.accuracy);
                let line = format!(
                    "epoch {epoch} step {step}: train loss {train_loss:.4}, dev loss {:.4}, dev acc {:.4}, F1 {:.4}{}",
                    eval.loss,
                    eval.metrics.accuracy,
                    eval.metrics.f1,
                    if improved { " (best)" } else { "" }
                );
                bar.suspend(|| eprintln!("{line}"));
                if improved {
                    model.save(&checkpoint)?;
                    best = Some((epoch, eval.metrics));
                }
            }
        }
    }
    bar.finish_and_clear();
    let (best_epoch, dev_metrics) = best.expect("at least one evaluation ran");
    // Inference speed of the kept model, measured once more now that training is idle.
    let eval_speed = evaluate(&BiLstmStudent::load(&checkpoint, &dev_cpu)?, &dev_set, vocab.unk_id, EVAL_BATCH).sentences_per_s;
    Ok(ResultRow {
        experiment: exp.name.clone(),
        task: format!("{:?}", exp.task).to_lowercase(),
        stage: "student".into(),
        params: num_params,
        dev_accuracy: dev_metrics.accuracy,
        dev_precision: dev_metrics.precision,
        dev_recall: dev_metrics.recall,
        dev_f1: dev_metrics.f1,
        best_epoch,
        train_time_s: train_time,
        train_sentences_per_s: seen as f64 / train_time.max(1e-9),
        eval_sentences_per_s: eval_speed,
        config_hash: ctx.config_hash.clone(),
        git_commit: git_commit(),
        run_dir: ctx.run_dir.display().to_string(),
        finished_at_unix: unix_now(),
    })
}


/// Copies pretrained vectors into the embedding; other rows are random with the vectors'
/// spread, and `[PAD]` is zero.
fn init_embeddings(exp: &Experiment, encoder: &TextEncoder, model: &mut BiLstmStudent, rng: &mut StdRng) -> Result<()> {
    let vocab = encoder.vocab();
    let dim = model.shape.embedding_dim;
    let mut values = model.embedder.as_vec();
    if let (Some(path), Some(format)) = (&exp.embeddings.path, exp.embeddings.format) {
        let path = expand_path(path);
        let t0 = Instant::now();
        let pretrained = load_pretrained(&path, format, vocab.tokens())?;
        if pretrained.dim != dim {
            bail!(
                "{}: the vectors have {} dimensions but student.embedding_dim = {dim}; make them equal",
                path.display(),
                pretrained.dim
            );
        }
        let std = pretrained.value_std().max(1e-3);
        let normal = Normal::new(0.0, std).expect("positive std");
        for (i, row) in pretrained.rows.iter().enumerate() {
            let dst = &mut values[i * dim..(i + 1) * dim];
            match row {
                Some(v) => dst.copy_from_slice(v),
                None => dst.iter_mut().for_each(|x| *x = normal.sample(rng)),
            }
        }
        eprintln!(
            "embeddings: {} of {} vocab entries ({:.1}%) found in {} ({:.1} s)",
            pretrained.found(),
            vocab.len(),
            100.0 * pretrained.coverage(),
            path.display(),
            t0.elapsed().as_secs_f64()
        );
    }
    let pad = vocab.pad_id as usize;
    values[pad * dim..(pad + 1) * dim].fill(0.0);
    model.embedder.copy_from(&values);
    Ok(())
}
