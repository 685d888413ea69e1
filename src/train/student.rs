//! The `student` stage: the Bi-LSTM trained alone on gold labels (the paper's "Bi-LSTM" row).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use super::batches::shuffled_batches;
use super::training_loop::{run_training_loop, LoopSettings, Trainee};
use super::resume::checkpoint_dir;
use super::teacher::teacher_dir;
use super::{load_splits, RunContext};
use crate::backend::StudentBackend;
use crate::config::{expand_path, Experiment, TrainingSettings, VectorsTeacher};
use crate::data::{Dataset, Task};
use crate::embeddings::load_pretrained;
use crate::embeddings::teacher::{teacher_vectors, VectorSettings};
use crate::encode::EncodedSet;
use crate::files::write_atomic;
use crate::inference::{evaluate_student, Evaluation};
use crate::loss::Targets;
use crate::models::bilstm::{BiLstmStudent, StudentShape};
use crate::models::student_card::StudentCard;
use crate::optim::OptimizerConfig;
use crate::report::{MetricsLog, ResultRow};
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
        let task = exp.task();
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
        init_embeddings(exp, &encoder, &train_set, &mut model, &mut rng)?;
        Ok(StudentSetup { task, train, dev, encoder, train_set, dev_set, model, dev_cpu, rng })
    }
}

/// How a student stage trains: the stage's name in the reports, its section's training
/// settings, and whether the embedding is trained.
pub struct FitSettings {
    pub stage: &'static str,
    pub training: TrainingSettings,
    pub train_embeddings: bool,
}

pub fn train_student(ctx: &RunContext) -> Result<ResultRow> {
    let exp = &ctx.experiment;
    let cfg = exp.student.as_ref().context("the student stage needs a [student] table")?;
    let mut setup = StudentSetup::new(exp, cfg.dropout)?;
    let settings = FitSettings { stage: "student", training: cfg.training(), train_embeddings: cfg.train_embeddings };
    let train_set = std::mem::take(&mut setup.train_set);
    fit(ctx, &mut setup, &train_set, Targets::Gold, &settings)
}

/// Trains `setup.model` on `train_set` through the shared training loop on the device the
/// experiment names; keeps the best checkpoint in `RUN_DIR/STAGE/` and leaves its weights
/// in `setup.model`.
pub fn fit(ctx: &RunContext, setup: &mut StudentSetup, train_set: &EncodedSet, targets: Targets, settings: &FitSettings) -> Result<ResultRow> {
    let (stage, cfg) = (settings.stage, &settings.training);
    let vocab = setup.encoder.vocab();
    let num_params = setup.model.num_params();
    eprintln!("{stage}: {num_params} parameters, {} training rows", train_set.len());

    let student_dir = ctx.run_dir.join(stage);
    std::fs::create_dir_all(&student_dir)?;
    StudentCard::save(&ctx.experiment, &student_dir)?;
    write_atomic(&student_dir.join("vocab.txt"), vocab.to_text().as_bytes())?;
    let checkpoint = student_dir.join("model.safetensors");
    let mut log = MetricsLog::open(ctx.run_dir.join("metrics.csv"), stage)?;
    let optimizer = OptimizerConfig::new(cfg.optimizer, cfg.lr);
    let backend = StudentBackend::new(setup.model.clone(), optimizer, settings.train_embeddings, ctx.experiment.device, ctx.experiment.seed)?;
    let mut trainee = StudentTrainee {
        backend,
        train_set,
        dev_set: &setup.dev_set,
        empty_id: vocab.unk_id,
        targets,
        max_grad_norm: cfg.max_grad_norm as f32,
        checkpoint: &checkpoint,
        teacher_rows: Vec::new(),
    };
    let loop_settings = LoopSettings::new(stage, cfg, train_set.len(), checkpoint_dir(&student_dir), &ctx.data_digest);
    let rng = &mut setup.rng;
    let outcome = run_training_loop(&loop_settings, &mut trainee, || shuffled_batches(train_set.len(), cfg.batch_size, rng), &mut log)?;

    // Keep the best weights in the setup, and time inference once more now that training is idle.
    setup.model = BiLstmStudent::load(&checkpoint, &setup.dev_cpu)?;
    let mut backend = trainee.backend;
    backend.load_weights(setup.model.clone())?;
    let eval_speed = evaluate_student(&backend, &setup.dev_set, vocab.unk_id, EVAL_BATCH)?.sentences_per_s;
    Ok(ctx.result_row(stage, num_params, outcome.best_epoch, outcome.dev, outcome.train_time_s, outcome.sentences_seen, eval_speed))
}

/// The student as the training loop sees it.
struct StudentTrainee<'a> {
    backend: StudentBackend,
    train_set: &'a EncodedSet,
    dev_set: &'a EncodedSet,
    /// The id an empty text reads as.
    empty_id: u32,
    targets: Targets<'a>,
    max_grad_norm: f32,
    checkpoint: &'a std::path::Path,
    /// The batch's teacher logits (reused buffer).
    teacher_rows: Vec<f32>,
}

impl Trainee for StudentTrainee<'_> {
    fn train_step(&mut self, batch: &[usize], _step: usize) -> Result<f64> {
        let input = self.train_set.input(batch, self.empty_id);
        let labels: Vec<usize> = batch.iter().map(|&i| self.train_set.labels[i]).collect();
        let classes = self.backend.model().shape.num_labels;
        let targets = self.targets.gather(batch, classes, &mut self.teacher_rows);
        self.backend.train_step(&input, &labels, &targets, self.max_grad_norm)
    }

    fn evaluate(&mut self) -> Result<Evaluation> {
        evaluate_student(&self.backend, self.dev_set, self.empty_id, EVAL_BATCH)
    }

    fn save_best(&mut self) -> Result<()> {
        self.backend.host_model()?.save(self.checkpoint)
    }

    fn save_state(&mut self, path: &std::path::Path) -> Result<bool> {
        self.backend.save_state(path)
    }

    fn load_state(&mut self, path: &std::path::Path) -> Result<()> {
        self.backend.load_state(path)
    }
}

/// Fills the embedding with the teacher's vectors (`source = "teacher"`), or copies pretrained
/// vectors into it with the other rows random at the vectors' spread; `[PAD]` is zero.
fn init_embeddings(exp: &Experiment, encoder: &TextEncoder, train_set: &EncodedSet, model: &mut BiLstmStudent, rng: &mut StdRng) -> Result<()> {
    let vocab = encoder.vocab();
    let dim = model.shape.embedding_dim;
    let values = &mut model.embedder.weight;
    if let Some(teacher) = exp.vectors_teacher() {
        let teacher_path = match teacher {
            VectorsTeacher::Dir(dir) => expand_path(&dir),
            VectorsTeacher::Pretrained(model) => expand_path(&model),
            VectorsTeacher::Trained => teacher_dir(exp),
        };
        if !teacher_path.join("model.safetensors").is_file() {
            bail!("{}: no teacher there for embeddings.source = \"teacher\"; run the \"teacher\" stage first", teacher_path.display());
        }
        let mut counts = vec![0u64; vocab.len()];
        for row in train_set.a.iter().chain(train_set.b.iter().flatten()) {
            row.iter().for_each(|&id| counts[id as usize] += 1);
        }
        let e = &exp.embeddings;
        let settings = VectorSettings { layer: e.layer, pooling: e.pooling.unwrap_or_default(), weighting: e.weighting.unwrap_or_default(), dim };
        let cache_dir = expand_path(&exp.out_dir).join("cache");
        let made = teacher_vectors(&teacher_path, vocab.tokens(), vocab.pad_id as usize, &counts, settings, Some(&cache_dir))?;
        values.copy_from_slice(&made.values);
        let rms = (made.values.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / made.values.len().max(1) as f64).sqrt();
        eprintln!(
            "embeddings: all {} vocab entries from the teacher {} ({dim}d, PCA keeps {:.1}% of the variance, rms {rms:.3}){}",
            vocab.len(),
            teacher_path.display(),
            100.0 * made.explained,
            match (&made.cache_file, made.cached) {
                (Some(file), true) => format!("; reused {}", file.display()),
                (Some(file), false) => format!("; cached in {}", file.display()),
                (None, _) => String::new(),
            }
        );
    }
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
    Ok(())
}
