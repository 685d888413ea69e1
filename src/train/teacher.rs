//! The `teacher` stage: fine-tune a pretrained BERT on the task (the paper's "Teacher" row)
//! through the shared training loop, and where a task's fine-tuned teacher lives.
//!
//! Recipe as in the BERT paper and HF's `run_glue.py`: AdamW (no decay on biases and
//! LayerNorm), linear warm-up then linear decay to 0, global gradient clipping. Batches are
//! bucketed by length so that little compute goes to padding.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use sha2::{Digest, Sha256};

use super::batches::bucketed_batches;
use super::training_loop::{run_training_loop, LoopSettings, Trainee};
use super::resume::{checkpoint_dir, remove_checkpoint, TrainingState};
use super::{load_splits, RunContext};
use crate::backend::TeacherBackend;
use crate::config::{expand_path, DataConfig, DeviceName, Experiment, TaskName, TeacherConfig};
use crate::data::Task;
use crate::encode::TeacherSet;
use crate::files::write_atomic;
use crate::inference::{evaluate_teacher, Evaluation};
use crate::loss::{self, Targets};
use crate::models::bert::{BertForSequenceClassification, BertInput};
use crate::ops::dropout::DropoutRng;
use crate::ops::packed::Precision;
use crate::optim::{warmup_linear_lr, Optimizer};
use crate::report::{MetricsLog, ResultRow};
use crate::tokenize::BertTokenizer;

/// Loads the teacher an experiment names, with a classifier for the task's labels.
pub fn load_teacher(cfg: &TeacherConfig, task: &Task, dev: &Cpu, rng: &mut StdRng) -> Result<(BertForSequenceClassification, BertTokenizer)> {
    let dir = expand_path(&cfg.model);
    if !dir.is_dir() {
        bail!(
            "{}: no such model dir (teacher.model); run scripts/setup for the default all-MiniLM-L6-v2 \
             (the Chinese e5 teacher then needs `distill import-e5` and `distill trim-vocab`, see the README), \
             or point teacher.model at an HF BERT dir",
            dir.display()
        );
    }
    let tokenizer = BertTokenizer::load(&dir, cfg.max_seq_len)?;
    let model = BertForSequenceClassification::load(&dir, task.num_labels(), dev, rng)?;
    if model.bert.config.max_position_embeddings < cfg.max_seq_len {
        bail!(
            "teacher.max_seq_len = {} exceeds the model's max_position_embeddings ({}); lower it",
            cfg.max_seq_len,
            model.bert.config.max_position_embeddings
        );
    }
    Ok((model, tokenizer))
}

pub fn train_teacher(ctx: &RunContext) -> Result<ResultRow> {
    let exp = &ctx.experiment;
    let cfg = exp.teacher.as_ref().context("the teacher stage needs a [teacher] table")?;
    // A finished teacher with the same key is reused by the stage runner before this is called.
    let teacher_dir = teacher_dir(exp);
    let task = exp.task();
    let (train, dev) = load_splits(exp, &task)?;
    eprintln!("data: {} train, {} dev examples ({:?})", train.examples.len(), dev.examples.len(), task.name);

    let seed = exp.teacher_seed();
    let dev_cpu = Cpu::seed_from_u64(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut model, tokenizer) = load_teacher(cfg, &task, &dev_cpu, &mut rng)?;
    let train_set = TeacherSet::new(&train, &tokenizer)?;
    let dev_set = TeacherSet::new(&dev, &tokenizer)?;
    let num_params = model.num_params();
    let mean_len = train_set.rows.iter().map(|r| r.0.len()).sum::<usize>() as f64 / train_set.len().max(1) as f64;
    eprintln!(
        "teacher: {} ({} layers, hidden {}), {num_params} parameters; mean train length {mean_len:.1} tokens",
        expand_path(&cfg.model).display(),
        model.bert.config.num_hidden_layers,
        model.bert.config.hidden_size
    );

    let mut log = MetricsLog::open(ctx.run_dir.join("metrics.csv"), "teacher")?;
    let mut optimizer = Optimizer::adamw(cfg.lr, cfg.weight_decay);
    let names: Vec<String> = model.params_mut().into_iter().map(|(n, _)| n).collect();
    optimizer.exclude_from_decay(names.iter().map(|n| n.ends_with(".bias") || n.contains("LayerNorm")).collect());

    let lengths: Vec<usize> = train_set.rows.iter().map(|r| r.0.len()).collect();
    let total_steps = train_set.len().div_ceil(cfg.batch_size) * cfg.epochs;
    let mut trainee = TeacherTrainee {
        model: &mut model,
        optimizer,
        dropout_rng: DropoutRng::new(seed),
        trainable: vec![true; names.len()],
        cfg,
        train_set: &train_set,
        dev_set: &dev_set,
        pad_id: tokenizer.pad_id,
        labels: &task.labels,
        dir: &teacher_dir,
        warmup: (cfg.warmup_ratio * total_steps as f64).ceil() as usize,
        total_steps,
    };
    let settings = LoopSettings::new("teacher", &cfg.training(), train_set.len(), checkpoint_dir(&teacher_dir), &ctx.data_digest);
    let outcome = run_training_loop(&settings, &mut trainee, || bucketed_batches(&lengths, cfg.batch_size, &mut rng), &mut log)?;
    let (best_epoch, dev_metrics) = (outcome.best_epoch, outcome.dev);
    // Reload the kept dir: checks that it round-trips and times inference on an idle model.
    let (saved, saved_tokenizer) = reload_saved(&teacher_dir, cfg, &task, &dev_cpu)?;
    let check = evaluate_teacher(&TeacherBackend::new(&saved, DeviceName::Cpu, Precision::F32)?, &dev_set, saved_tokenizer.pad_id, cfg.eval_batch_size)?;
    if (check.metrics.accuracy - dev_metrics.accuracy).abs() > 1e-9 {
        bail!(
            "{}: the saved teacher scores dev accuracy {:.4}, not the {:.4} it had when saved",
            teacher_dir.display(),
            check.metrics.accuracy,
            dev_metrics.accuracy
        );
    }
    eprintln!("teacher saved to {} (an HF model dir)", teacher_dir.display());
    let row = ctx.result_row("teacher", num_params, best_epoch, dev_metrics, outcome.train_time_s, outcome.sentences_seen, check.sentences_per_s);
    write_atomic(&teacher_dir.join(RESULT_FILE), serde_json::to_string_pretty(&row)?.as_bytes())?;
    remove_checkpoint(&teacher_dir)?;
    Ok(row)
}

/// The teacher as the training loop sees it: AdamW with the warm-up schedule, on the CPU.
struct TeacherTrainee<'a> {
    model: &'a mut BertForSequenceClassification,
    optimizer: Optimizer,
    dropout_rng: DropoutRng,
    trainable: Vec<bool>,
    cfg: &'a TeacherConfig,
    train_set: &'a TeacherSet,
    dev_set: &'a TeacherSet,
    pad_id: u32,
    labels: &'a [String],
    dir: &'a Path,
    warmup: usize,
    total_steps: usize,
}

impl Trainee for TeacherTrainee<'_> {
    fn train_step(&mut self, batch: &[usize], step: usize) -> Result<f64> {
        self.optimizer.set_lr(warmup_linear_lr(self.cfg.lr, step, self.warmup, self.total_steps));
        let input = self.train_set.input(batch, self.pad_id);
        let labels: Vec<usize> = batch.iter().map(|&i| self.train_set.labels[i]).collect();
        Ok(teacher_step(self.model, &mut self.optimizer, &self.dropout_rng, &self.trainable, &input, &labels, self.cfg.max_grad_norm as f32))
    }

    fn evaluate(&mut self) -> Result<Evaluation> {
        let teacher = TeacherBackend::new(self.model, DeviceName::Cpu, Precision::F32)?;
        evaluate_teacher(&teacher, self.dev_set, self.pad_id, self.cfg.eval_batch_size)
    }

    fn save_best(&mut self) -> Result<()> {
        self.model.save(self.dir, self.labels)
    }

    fn save_state(&mut self, path: &Path) -> Result<bool> {
        TrainingState { params: &mut self.model.params_mut(), optimizer: &mut self.optimizer, dropout_rng: &self.dropout_rng }.save(path)?;
        Ok(true)
    }

    fn load_state(&mut self, path: &Path) -> Result<()> {
        TrainingState { params: &mut self.model.params_mut(), optimizer: &mut self.optimizer, dropout_rng: &self.dropout_rng }.load(path)
    }
}

/// One optimizer step of the teacher on a batch (cross-entropy on gold labels, dropout masks
/// from `dropout_rng`; the global gradient norm clipped to `max_grad_norm` when it is > 0);
/// returns the loss. A non-finite loss makes no update.
pub fn teacher_step(
    model: &mut BertForSequenceClassification,
    optimizer: &mut Optimizer,
    dropout_rng: &DropoutRng,
    trainable: &[bool],
    input: &BertInput,
    labels: &[usize],
    max_grad_norm: f32,
) -> f64 {
    let value = loss::loss(model.forward_train(input, dropout_rng), labels, &Targets::Gold);
    optimizer.minimize(value, model.params_mut(), trainable, |_| Vec::new(), max_grad_norm)
}

/// Written into a teacher dir when its training finished; its presence means "reuse me".
pub const RESULT_FILE: &str = "distill_result.json";

/// Where an experiment's teacher lives: `OUT_DIR/teachers/TASK-HASH`, the hash taken over
/// everything that shapes the teacher (task, data, seed, `[teacher]`), so experiments that
/// differ only in student or distillation settings share one fine-tuned teacher.
pub fn teacher_dir(exp: &Experiment) -> PathBuf {
    #[derive(serde::Serialize)]
    struct TeacherIdentity<'a> {
        task: TaskName,
        seed: u64,
        data: &'a DataConfig,
        teacher: &'a Option<TeacherConfig>,
    }
    // `teacher.seed = 1` and `seed = 1` give the same teacher (and an unset one the old hash).
    let teacher = exp.teacher.clone().map(|t| TeacherConfig { seed: None, ..t });
    let identity = TeacherIdentity { task: exp.task, seed: exp.teacher_seed(), data: &exp.data, teacher: &teacher };
    let text = toml::to_string(&identity).expect("serialisable");
    let hash: String = Sha256::digest(text.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect();
    expand_path(&exp.out_dir).join("teachers").join(format!("{}-{hash}", exp.task.name()))
}

/// The result row of a finished teacher dir, if training finished there.
pub fn finished_teacher(dir: &Path) -> Result<Option<ResultRow>> {
    let path = dir.join(RESULT_FILE);
    let weights = dir.join("model.safetensors");
    if !path.is_file() || !weights.is_file() {
        return Ok(None);
    }
    if !crate::files::safetensors_intact(&weights) {
        eprintln!("{}: truncated, damaged or not safetensors; the teacher is not reused and trains again", weights.display());
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("{}: not a distill result file; delete it to retrain", path.display()))?))
}

fn reload_saved(dir: &Path, cfg: &TeacherConfig, task: &Task, dev: &Cpu) -> Result<(BertForSequenceClassification, BertTokenizer)> {
    let tokenizer = BertTokenizer::load(dir, cfg.max_seq_len)?;
    let model = BertForSequenceClassification::load(dir, task.num_labels(), dev, &mut StdRng::seed_from_u64(0))?;
    Ok((model, tokenizer))
}
