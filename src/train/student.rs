//! The `student` stage: the Bi-LSTM trained alone on gold labels (the paper's "Bi-LSTM" row).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use super::{evaluate, evaluate_with, one_hot, load_splits, progress_bar, shuffled_batches, EncodedSet, RunContext};
use crate::config::{expand_path, DeviceName, DistillLoss, Experiment, OptimizerName, VocabKind};
use crate::gpu::student::{BatchTargets, GpuStudent};
use crate::data::{Dataset, Task};
use crate::models::lstm::Matrix;
use crate::embeddings::load_pretrained;
use crate::metrics::Metrics;
use crate::models::bilstm::{BiLstmStudent, StudentShape};
use crate::optim::{clip_grad_norm, Optimizer, OptimizerConfig};
use crate::report::{write_atomic, MetricsLog, ResultRow};
use crate::tokenize::TextEncoder;

/// Eval batches are larger than training ones: no activations are kept.
const EVAL_BATCH: usize = 256;

/// Everything a student stage starts from: data, vocab, encoded splits and a fresh model
/// (pretrained vectors copied in). The "student" and "distill" stages share it.
pub struct StudentSetup {
    pub task: Task,
    pub train: Dataset,
    pub dev: Dataset,
    pub encoder: TextEncoder,
    pub train_set: EncodedSet,
    pub dev_set: EncodedSet,
    pub model: BiLstmStudent,
    pub dev_cpu: Cpu,
    pub rng: StdRng,
}

impl StudentSetup {
    pub fn new(exp: &Experiment, dropout: f64) -> Result<StudentSetup> {
        let cfg = exp.student.as_ref().context("this stage needs a [student] table")?;
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
        let mut model = BiLstmStudent::new(shape, dropout as f32, &dev_cpu, &mut rng);
        init_embeddings(exp, &encoder, &mut model, &mut rng)?;
        Ok(StudentSetup { task, train, dev, encoder, train_set, dev_set, model, dev_cpu, rng })
    }
}

/// How a student stage trains: optimizer settings and the stage's name in the reports.
pub struct FitSettings {
    pub stage: &'static str,
    pub optimizer: OptimizerName,
    pub lr: f64,
    pub batch_size: usize,
    pub epochs: usize,
    pub eval_every: usize,
    pub max_grad_norm: f64,
    pub train_embeddings: bool,
}

/// What the student learns from on each training row.
pub enum Targets<'a> {
    /// Cross-entropy on the gold labels.
    Gold,
    /// The teacher's logits (`rows × labels`, in training-set order) with a distillation loss.
    Teacher { logits: &'a [f32], loss: LossSpec },
}

pub fn train_student(ctx: &RunContext) -> Result<ResultRow> {
    let exp = &ctx.experiment;
    let cfg = exp.student.as_ref().context("the student stage needs a [student] table")?;
    let mut setup = StudentSetup::new(exp, cfg.dropout)?;
    let settings = FitSettings {
        stage: "student",
        optimizer: cfg.optimizer,
        lr: cfg.lr,
        batch_size: cfg.batch_size,
        epochs: cfg.epochs,
        eval_every: cfg.eval_every,
        max_grad_norm: cfg.max_grad_norm,
        train_embeddings: cfg.train_embeddings,
    };
    let train_set = std::mem::take(&mut setup.train_set);
    fit(ctx, &mut setup, &train_set, Targets::Gold, &settings)
}

/// Trains `setup.model` on `train_set`, evaluating on dev each epoch (and every
/// `eval_every` steps); keeps the best checkpoint in `RUN_DIR/STAGE/`.
pub fn fit(ctx: &RunContext, setup: &mut StudentSetup, train_set: &EncodedSet, targets: Targets, cfg: &FitSettings) -> Result<ResultRow> {
    let stage = cfg.stage;
    let (model, dev_set, dev_cpu, rng) = (&mut setup.model, &setup.dev_set, &setup.dev_cpu, &mut setup.rng);
    let vocab = setup.encoder.vocab();
    let shape = model.shape;
    let num_params = model.num_params();
    eprintln!("{stage}: {num_params} parameters, {} training rows", train_set.len());

    let student_dir = ctx.run_dir.join(stage);
    std::fs::create_dir_all(&student_dir)?;
    StudentCard::save(&ctx.experiment, &student_dir)?;
    write_atomic(&student_dir.join("vocab.txt"), vocab.to_text().as_bytes())?;
    let checkpoint = student_dir.join("model.safetensors");
    let mut log = MetricsLog::open(ctx.run_dir.join("metrics.csv"), stage)?;
    let optimizer_config = OptimizerConfig::new(cfg.optimizer, cfg.lr);
    let mut optimizer = Optimizer::new(optimizer_config);
    let trainable: Vec<bool> =
        model.params_mut().iter().enumerate().map(|(i, _)| i > 0 || cfg.train_embeddings).collect();
    // device = "cuda": the same model and optimizer on the GPU; the CPU copy is refreshed for checkpoints.
    let mut gpu_model = match ctx.experiment.device {
        DeviceName::Cpu => None,
        DeviceName::Cuda => {
            let gpu = crate::gpu::Gpu::new()?;
            eprintln!("{stage}: training on the GPU ({})", gpu.name());
            Some(GpuStudent::new(gpu, model, optimizer_config, ctx.experiment.seed)?)
        }
    };

    let steps_per_epoch = train_set.len().div_ceil(cfg.batch_size);
    let bar = progress_bar((steps_per_epoch * cfg.epochs) as u64, stage);
    let start = Instant::now();
    let mut train_time = 0f64;
    let mut seen = 0usize;
    let mut best: Option<(usize, Metrics)> = None; // (epoch, dev metrics) of the kept checkpoint
    let mut step = 0usize;
    for epoch in 1..=cfg.epochs {
        let mut epoch_loss = 0f64;
        let mut epoch_batches = 0usize;
        for batch in shuffled_batches(train_set.len(), cfg.batch_size, rng) {
            let t0 = Instant::now();
            let input = train_set.input(&batch, vocab.unk_id);
            let labels: Vec<usize> = batch.iter().map(|&i| train_set.labels[i]).collect();
            let teacher_rows = |teacher: &[f32]| -> Vec<f32> {
                let classes = shape.num_labels;
                batch.iter().flat_map(|&i| teacher[i * classes..(i + 1) * classes].iter().copied()).collect()
            };
            let loss_value = if let Some(gpu_model) = gpu_model.as_mut() {
                let rows;
                let batch_targets = match &targets {
                    Targets::Gold => BatchTargets::Gold,
                    Targets::Teacher { logits, loss } => {
                        rows = teacher_rows(logits);
                        BatchTargets::Teacher { logits: &rows, loss: *loss }
                    }
                };
                gpu_model
                    .train_step(&input, &labels, &batch_targets, cfg.max_grad_norm as f32, cfg.train_embeddings)
                    .with_context(|| format!("{stage}: GPU training step {step}"))? as f64
            } else {
                let logits = model.forward_train(&input);
                let loss = match &targets {
                    Targets::Gold => cross_entropy_with_logits_loss(logits, one_hot(dev_cpu, &labels, shape.num_labels)),
                    Targets::Teacher { logits: teacher, loss } => distill_loss(logits, &teacher_rows(teacher), &labels, *loss),
                };
                let loss_value = loss.array() as f64;
                if loss_value.is_finite() {
                    let mut grads = loss.backward();
                    let mut params = model.params_mut();
                    if cfg.max_grad_norm > 0.0 {
                        clip_grad_norm(&params, &mut grads, cfg.max_grad_norm as f32);
                    }
                    let rows = input.tokens.distinct_ids();
                    optimizer.step(&mut params, &trainable, &[Some(rows.as_slice())], &mut grads);
                }
                loss_value
            };
            if !loss_value.is_finite() {
                bail!("the training loss became {loss_value} at step {step}; lower {stage}.lr or set {stage}.max_grad_norm");
            }
            train_time += t0.elapsed().as_secs_f64();
            seen += batch.len();
            step += 1;
            epoch_loss += loss_value;
            epoch_batches += 1;
            bar.inc(1);
            let end_of_epoch = epoch_batches == steps_per_epoch;
            if end_of_epoch || (cfg.eval_every > 0 && step.is_multiple_of(cfg.eval_every)) {
                let train_loss = epoch_loss / epoch_batches as f64;
                let eval = match gpu_model.as_ref() {
                    Some(g) => evaluate_with(dev_set, vocab.unk_id, EVAL_BATCH, shape.num_labels, |input| g.predict_logits(input))?,
                    None => evaluate(model, dev_set, vocab.unk_id, EVAL_BATCH),
                };
                let elapsed = start.elapsed().as_secs_f64();
                log.push_evaluation(stage, step, epoch, train_loss, eval.loss, eval.metrics, elapsed)?;
                let improved = best.as_ref().is_none_or(|(_, m)| eval.metrics.accuracy > m.accuracy);
                let line = format!(
                    "{stage} epoch {epoch} step {step}: train loss {train_loss:.4}, dev loss {:.4}, dev acc {:.4}, F1 {:.4}{}",
                    eval.loss,
                    eval.metrics.accuracy,
                    eval.metrics.f1,
                    if improved { " (best)" } else { "" }
                );
                bar.suspend(|| eprintln!("{line}"));
                if improved {
                    if let Some(g) = gpu_model.as_ref() {
                        g.copy_to(model)?;
                    }
                    model.save(&checkpoint)?;
                    best = Some((epoch, eval.metrics));
                }
            }
        }
    }
    bar.finish_and_clear();
    let (best_epoch, dev_metrics) = best.expect("at least one evaluation ran");
    // Keep the best weights in the setup, and time inference once more now that training is idle.
    *model = BiLstmStudent::load(&checkpoint, dev_cpu)?;
    let eval_speed = match gpu_model.take() {
        Some(g) => {
            let g = GpuStudent::new(g.into_gpu(), model, optimizer_config, ctx.experiment.seed)?;
            evaluate_with(dev_set, vocab.unk_id, EVAL_BATCH, shape.num_labels, |input| g.predict_logits(input))?.sentences_per_s
        }
        None => evaluate(model, dev_set, vocab.unk_id, EVAL_BATCH).sentences_per_s,
    };
    Ok(ctx.result_row(stage, num_params, best_epoch, dev_metrics, train_time, seen, eval_speed))
}

/// `student.json` in a student stage dir: what `distill predict` needs besides the weights
/// and `vocab.txt` (WordPiece students also get a copy of the teacher's `tokenizer.json`),
/// so the dir works on its own.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StudentCard {
    pub task: String,
    /// Label names in class order.
    pub labels: Vec<String>,
    pub pair: bool,
    /// "english" or "chinese".
    pub language: String,
    /// "wordpiece" or "jieba".
    pub vocab: String,
    pub max_seq_len: usize,
}

impl StudentCard {
    fn from_experiment(exp: &Experiment) -> Result<StudentCard> {
        let cfg = exp.student.as_ref().context("a student stage needs [student]")?;
        let task = Task::new(exp.task, exp.data.columns.as_ref());
        Ok(StudentCard {
            task: format!("{:?}", exp.task).to_lowercase(),
            labels: task.labels.clone(),
            pair: task.is_pair(),
            language: format!("{:?}", task.language).to_lowercase(),
            vocab: format!("{:?}", exp.vocab.kind).to_lowercase(),
            max_seq_len: cfg.max_seq_len,
        })
    }

    fn save(exp: &Experiment, dir: &Path) -> Result<()> {
        let card = StudentCard::from_experiment(exp)?;
        write_atomic(&dir.join("student.json"), serde_json::to_string_pretty(&card)?.as_bytes())?;
        if exp.vocab.kind == VocabKind::Wordpiece {
            if let Some(file) = wordpiece_tokenizer_json(exp) {
                write_atomic(&dir.join("tokenizer.json"), &std::fs::read(&file)?)?;
            }
        }
        Ok(())
    }

    /// Reads `student.json` of a student dir. Dirs written before it existed are described
    /// by their run's `config.toml` one level up; their WordPiece tokenizer is then the one
    /// that config names (returned beside the card).
    pub fn load(dir: &Path) -> Result<(StudentCard, Option<PathBuf>)> {
        let path = dir.join("student.json");
        if !path.is_file() {
            let config = dir.join("../config.toml");
            if config.is_file() {
                let exp = Experiment::load(&config, &[])?;
                return Ok((StudentCard::from_experiment(&exp)?, wordpiece_tokenizer_json(&exp)));
            }
        }
        let bytes = std::fs::read(&path)
            .with_context(|| format!("{}: cannot read; is this a student dir written by distill?", path.display()))?;
        let card = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a student.json written by distill", path.display()))?;
        Ok((card, None))
    }
}

/// The `tokenizer.json` an experiment's WordPiece vocab comes from, if it names one.
fn wordpiece_tokenizer_json(exp: &Experiment) -> Option<PathBuf> {
    let source = expand_path(exp.vocab.tokenizer.as_deref()?);
    let file = if source.is_dir() { source.join("tokenizer.json") } else { source };
    (file.file_name().is_some_and(|n| n == "tokenizer.json") && file.is_file()).then_some(file)
}

/// The distillation loss of a batch: `alpha`·CE(gold) + (1 − `alpha`)·`kind`, where `kind`
/// compares the student's logits with the teacher's (`rows × classes`, row-major).
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
            let probs: Vec<f32> = teacher.chunks_exact(classes).flat_map(|row| softmax(row, t)).collect();
            kl_div_with_logits_loss(logits / t, dev.tensor_from_vec(probs, shape)) * (t * t)
        }
    };
    match gold {
        None => soft,
        Some(gold) => soft * (1.0 - spec.alpha) + gold * spec.alpha,
    }
}

fn softmax(row: &[f32], temperature: f32) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = row.iter().map(|v| ((v - max) / temperature).exp()).collect();
    let sum: f32 = e.iter().sum();
    // Floored so that KL's log never sees an exact 0.
    e.into_iter().map(|v| (v / sum).max(1e-12)).collect()
}

/// The loss of the "distill" stage, from `[distill]`.
#[derive(Debug, Clone, Copy)]
pub struct LossSpec {
    pub kind: DistillLoss,
    pub alpha: f32,
    pub temperature: f32,
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
