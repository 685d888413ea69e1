//! `distill bench`: training and inference sentences/s of the Bi-LSTM student and the BERT
//! teacher, with `scripts/bench_student.py` / `scripts/bench_teacher.py` measuring the same
//! models and shapes in PyTorch in the same run.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::backend::{StudentBackend, TeacherBackend};
use crate::config::{expand_path, DeviceName, Experiment, OptimizerName};
use crate::encode::EncodedSet;
use crate::loss::{LossSpec, Targets};
use crate::models::bert::{BertForSequenceClassification, BertInput};
use crate::models::bilstm::{BiLstmStudent, StudentInput, StudentShape, TokenBatch};
use crate::optim::{Optimizer, OptimizerConfig};
use crate::ops::dropout::DropoutRng;
use crate::ops::packed::Precision;
use crate::train::distill::transfer_set;
use crate::train::student::StudentSetup;
use crate::train::teacher::teacher_step;

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchModel {
    Student,
    Teacher,
    All,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Which model to measure.
    #[arg(long, value_enum, default_value_t = BenchModel::All)]
    pub model: BenchModel,
    /// Where the models run: the GPU student and teacher inference on cuda (PyTorch then
    /// uses cuDNN); teacher fine-tuning runs on the CPU either way.
    #[arg(long, value_enum, default_value_t = DeviceName::Cpu)]
    pub device: DeviceName,
    #[arg(long, default_value_t = 30522)]
    pub vocab: usize,
    #[arg(long, default_value_t = 300)]
    pub embedding_dim: usize,
    #[arg(long, default_value_t = 300)]
    pub hidden: usize,
    #[arg(long, default_value_t = 30)]
    pub seq_len: usize,
    /// Training batch size.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// A second training batch size, measured the same way (the distill stage's 128).
    #[arg(long, default_value_t = 128)]
    pub large_batch: usize,
    /// Inference batch size.
    #[arg(long, default_value_t = 256)]
    pub infer_batch: usize,
    /// Timed training steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Timed inference batches (after 2 warm-up batches).
    #[arg(long, default_value_t = 30)]
    pub infer_steps: usize,
    /// Timed single-sentence predictions for the latency figure (after 10 warm-up ones).
    #[arg(long, default_value_t = 200)]
    pub latency_steps: usize,
    /// The experiment whose transfer set the "transfer set" figure trains on, as its distill
    /// stage does (its [student] shape, [distill] loss, optimizer, batch and dropout), over the
    /// rows made from its first `--transfer-sources` training sentences; "" skips the figure.
    #[arg(long, default_value = "experiments/sst2.toml")]
    pub transfer: String,
    #[arg(long, default_value_t = 2000)]
    pub transfer_sources: usize,
    /// Timed batches of the transfer-set figure (after 2 warm-up batches).
    #[arg(long, default_value_t = 40)]
    pub transfer_steps: usize,
    /// Python with PyTorch for the reference numbers (default: $DISTILL_TORCH_PYTHON, else python3).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Skip the PyTorch reference.
    #[arg(long)]
    pub no_torch: bool,
    /// Alternating rounds of both measurements; medians are reported (timings on a shared
    /// 2-core machine vary by tens of percent between runs).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The teacher: an HF BERT model dir (a classifier head is added if it has none).
    #[arg(long, default_value = "${DISTILL_HOME}/models/all-MiniLM-L6-v2")]
    pub teacher_dir: String,
    #[arg(long, default_value_t = 32)]
    pub teacher_batch: usize,
    #[arg(long, default_value_t = 32)]
    pub teacher_seq_len: usize,
    #[arg(long, default_value_t = 128)]
    pub teacher_infer_batch: usize,
    /// Timed fine-tuning steps (after 1 warm-up step); 0 measures inference only.
    #[arg(long, default_value_t = 8)]
    pub teacher_steps: usize,
    /// Timed inference batches (after 1 warm-up batch).
    #[arg(long, default_value_t = 4)]
    pub teacher_infer_steps: usize,
}

/// Sentences per second of one measurement.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
pub struct Throughput {
    pub train_sentences_per_s: f64,
    pub infer_sentences_per_s: f64,
    /// Inference in reduced precision: ours in BF16 / INT8 (the student: INT8 only, its
    /// recurrent product); PyTorch's bf16 autocast and dynamic int8 quantisation
    /// (`quantize_dynamic` on the Linear layers, and the student's LSTM).
    #[serde(default)]
    pub infer_bf16_sentences_per_s: Option<f64>,
    #[serde(default)]
    pub infer_int8_sentences_per_s: Option<f64>,
    /// Student only: training at `--large-batch`, and milliseconds per single-sentence prediction.
    #[serde(default)]
    pub train_large_batch_sentences_per_s: Option<f64>,
    #[serde(default)]
    pub latency_ms: Option<f64>,
    /// Student only: the single-sentence prediction in INT8.
    #[serde(default)]
    pub latency_int8_ms: Option<f64>,
    /// Student only: rows/s of distill-stage training on the transfer-set sample.
    #[serde(default)]
    pub transfer_rows_per_s: Option<f64>,
}

/// A fixed sample of a real transfer set, in training order, with what the distill stage
/// trains it with; also written for `bench_student.py`, which trains PyTorch on the same rows.
pub struct TransferSample {
    model: BiLstmStudent,
    optimizer: OptimizerConfig,
    train_embeddings: bool,
    loss: LossSpec,
    max_grad_norm: f32,
    batch: usize,
    rows: Vec<Vec<u32>>,
    labels: Vec<usize>,
    empty_id: u32,
    /// `rows` and the shapes as JSON, for the PyTorch script.
    file: tempfile::NamedTempFile,
}

impl TransferSample {
    /// The transfer set of `--transfer`'s first `--transfer-sources` training sentences,
    /// shuffled once, cycled to `(--transfer-steps + 2) × batch` rows; `None` when skipped.
    pub fn load(args: &BenchArgs) -> Result<Option<TransferSample>> {
        if args.transfer.is_empty() {
            return Ok(None);
        }
        let path = std::path::Path::new(&args.transfer);
        if !path.is_file() {
            println!("transfer set: {} not found, figure skipped (--transfer FILE names an experiment)", path.display());
            return Ok(None);
        }
        let exp = Experiment::load(path, &[])?;
        let (Some(student), Some(distill)) = (exp.student.as_ref(), exp.distill.as_ref()) else {
            anyhow::bail!("{}: the transfer-set figure needs [student] and [distill] tables", path.display());
        };
        let setup = StudentSetup::new(&exp, distill.dropout)?;
        if setup.task.is_pair() {
            anyhow::bail!("{}: the transfer-set figure is for single-text tasks; pass --transfer with one", path.display());
        }
        let sources = &setup.train.examples[..args.transfer_sources.min(setup.train.examples.len())];
        let transfer = transfer_set(&exp, sources, setup.task.language)?;
        let set = EncodedSet::from_transfer(&transfer, &setup.encoder, setup.task.language, student.max_seq_len);
        let mut order: Vec<usize> = (0..set.a.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(0));
        let wanted = (args.transfer_steps + 2) * distill.batch_size;
        let picked: Vec<usize> = order.iter().cycle().take(wanted).copied().collect();
        let rows: Vec<Vec<u32>> = picked.iter().map(|&i| set.a[i].clone()).collect();
        let labels: Vec<usize> = picked.iter().map(|&i| set.labels[i]).collect();
        let tokens: usize = rows.iter().map(|r| r.len()).sum();
        println!(
            "transfer set: {} rows from the first {} training sentences of {} (n_iter {}), {:.1} tokens per row; distill batch {}, {} steps",
            transfer.len(),
            sources.len(),
            path.display(),
            exp.augment.n_iter,
            tokens as f64 / rows.len() as f64,
            distill.batch_size,
            args.transfer_steps
        );
        let shape = setup.model.shape;
        let empty_id = setup.encoder.vocab().unk_id;
        let json = serde_json::json!({
            "vocab": shape.vocab_size, "embedding_dim": shape.embedding_dim, "hidden": shape.hidden_size,
            "fc": shape.fc_size, "labels": shape.num_labels, "dropout": distill.dropout,
            "loss": distill.loss, "alpha": distill.alpha, "temperature": distill.temperature,
            "optimizer": distill.optimizer, "lr": distill.lr, "batch": distill.batch_size, "max_grad_norm": distill.max_grad_norm,
            "empty_id": empty_id, "rows": rows, "gold": labels,
        });
        let mut file = tempfile::NamedTempFile::new()?;
        serde_json::to_writer(&mut file, &json)?;
        Ok(Some(TransferSample {
            model: setup.model,
            optimizer: OptimizerConfig::new(distill.optimizer, distill.lr),
            train_embeddings: student.train_embeddings,
            loss: LossSpec { kind: distill.loss, alpha: distill.alpha as f32, temperature: distill.temperature as f32 },
            max_grad_norm: distill.max_grad_norm as f32,
            batch: distill.batch_size,
            rows,
            labels,
            empty_id,
            file,
        }))
    }

    /// Rows/s of distill-stage training steps over the sample (random teacher logits; the
    /// time does not depend on their values).
    fn measure(&self, device: DeviceName) -> Result<f64> {
        let mut student = StudentBackend::new(self.model.clone(), self.optimizer, self.train_embeddings, device, 0)?;
        let mut rng = StdRng::seed_from_u64(1);
        let classes = self.model.shape.num_labels;
        let batches: Vec<(StudentInput, &[usize], Vec<f32>)> = self
            .rows
            .chunks_exact(self.batch)
            .zip(self.labels.chunks_exact(self.batch))
            .map(|(rows, labels)| {
                let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
                let input = StudentInput { tokens: TokenBatch::new(&refs, self.empty_id), examples: rows.len() };
                let logits = (0..rows.len() * classes).map(|_| rng.gen_range(-3.0..3.0)).collect();
                (input, labels, logits)
            })
            .collect();
        let mut step = |(input, labels, logits): &(StudentInput, &[usize], Vec<f32>)| {
            student.train_step(input, labels, &Targets::Teacher { logits, loss: self.loss }, self.max_grad_norm)
        };
        for batch in &batches[..2] {
            step(batch)?;
        }
        let start = Instant::now();
        for batch in &batches[2..] {
            step(batch)?;
        }
        Ok(((batches.len() - 2) * self.batch) as f64 / start.elapsed().as_secs_f64())
    }
}

fn random_input(rng: &mut StdRng, args: &BenchArgs, batch: usize) -> StudentInput {
    let seqs: Vec<Vec<u32>> = (0..batch)
        .map(|_| (0..args.seq_len).map(|_| rng.gen_range(1..args.vocab as u32)).collect())
        .collect();
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    StudentInput { tokens: TokenBatch::new(&refs, 0), examples: batch }
}

/// The benchmarked student (the `bench_student.py` module's shape, dropout 0.4) and the
/// random generator for its batches.
fn bench_student_model(args: &BenchArgs) -> (StdRng, BiLstmStudent) {
    let dev = Cpu::seed_from_u64(0);
    let mut rng = StdRng::seed_from_u64(0);
    let shape = StudentShape {
        vocab_size: args.vocab,
        embedding_dim: args.embedding_dim,
        hidden_size: args.hidden,
        fc_size: args.hidden,
        num_labels: 2,
        pair_features: None,
    };
    let model = BiLstmStudent::new(shape, 0.4, &dev, &mut rng);
    (rng, model)
}

/// Measures the student (Adadelta, sparse embedding rows) on random full-length batches,
/// on the device of `--device`: training at `--batch` and `--large-batch`, inference at
/// `--infer-batch`, and single-sentence latency.
pub fn measure_student(args: &BenchArgs, transfer: Option<&TransferSample>) -> Result<Throughput> {
    let (mut rng, model) = bench_student_model(args);
    let mut student = StudentBackend::new(model, OptimizerConfig::new(OptimizerName::Adadelta, 1.0), true, args.device, 0)?;
    let mut train_rate = |batch: usize, rng: &mut StdRng| -> Result<f64> {
        let inputs: Vec<StudentInput> = (0..4).map(|_| random_input(rng, args, batch)).collect();
        let labels: Vec<Vec<usize>> = (0..4).map(|_| (0..batch).map(|_| rng.gen_range(0..2)).collect()).collect();
        // Each step reads its loss back, so the clock sees finished work on any device.
        let mut train_step = |i: usize| student.train_step(&inputs[i % 4], &labels[i % 4], &Targets::Gold, 0.0);
        for i in 0..2 {
            train_step(i)?;
        }
        let start = Instant::now();
        for i in 0..args.steps {
            train_step(i)?;
        }
        Ok((args.steps * batch) as f64 / start.elapsed().as_secs_f64())
    };
    let train = train_rate(args.batch, &mut rng)?;
    let train_large = train_rate(args.large_batch, &mut rng)?;

    let infer_inputs: Vec<StudentInput> = (0..4).map(|_| random_input(&mut rng, args, args.infer_batch)).collect();
    let sentences: Vec<StudentInput> = (0..16).map(|_| random_input(&mut rng, args, 1)).collect();
    // Seconds for `steps` predictions cycling through `inputs`, after `warmup` untimed ones.
    let seconds = |student: &StudentBackend, inputs: &[StudentInput], warmup: usize, steps: usize| -> Result<f64> {
        for input in inputs.iter().take(warmup) {
            student.predict_logits(input)?;
        }
        let start = Instant::now();
        for i in 0..steps {
            student.predict_logits(&inputs[i % inputs.len()])?;
        }
        Ok(start.elapsed().as_secs_f64())
    };
    let infer_rate = |student: &StudentBackend| -> Result<f64> {
        Ok((args.infer_steps * args.infer_batch) as f64 / seconds(student, &infer_inputs, 2, args.infer_steps)?)
    };
    let latency_ms = |student: &StudentBackend| -> Result<f64> {
        Ok(1e3 * seconds(student, &sentences, 10, args.latency_steps)? / args.latency_steps.max(1) as f64)
    };
    let infer = infer_rate(&student)?;
    let latency = latency_ms(&student)?;
    // INT8 (`distill predict --precision int8`): the recurrent product on the CPU.
    let (mut infer_int8, mut latency_int8) = (None, None);
    if args.device == DeviceName::Cpu {
        let mut model = student.model().clone();
        model.set_inference_precision(Precision::Int8);
        let int8 = StudentBackend::for_inference(model, DeviceName::Cpu)?;
        infer_int8 = Some(infer_rate(&int8)?);
        latency_int8 = Some(latency_ms(&int8)?);
    }
    Ok(Throughput {
        train_sentences_per_s: train,
        infer_sentences_per_s: infer,
        infer_int8_sentences_per_s: infer_int8,
        train_large_batch_sentences_per_s: Some(train_large),
        latency_ms: Some(latency),
        latency_int8_ms: latency_int8,
        transfer_rows_per_s: transfer.map(|t| t.measure(args.device)).transpose()?,
        ..Throughput::default()
    })
}

/// `rows` random full-length texts of `seq` tokens (single segment).
fn random_bert_input(rng: &mut StdRng, vocab: u32, rows: usize, seq: usize) -> BertInput {
    let seqs: Vec<(Vec<u32>, Vec<u32>)> =
        (0..rows).map(|_| ((0..seq).map(|_| rng.gen_range(1..vocab)).collect(), vec![0; seq])).collect();
    BertInput::new(&seqs, 0)
}

/// Measures BERT fine-tuning (AdamW, all parameters; on the CPU) and inference (on the
/// device of `--device`, in each precision it runs) on random full-length batches.
pub fn measure_teacher(args: &BenchArgs) -> Result<Throughput> {
    let dev = Cpu::seed_from_u64(0);
    let mut rng = StdRng::seed_from_u64(0);
    let mut model = BertForSequenceClassification::load(&expand_path(&args.teacher_dir), 2, &dev, &mut rng)?;
    let vocab = model.bert.config.vocab_size as u32;
    let mut batch = |rows: usize| {
        let input = random_bert_input(&mut rng, vocab, rows, args.teacher_seq_len);
        let labels: Vec<usize> = (0..rows).map(|_| rng.gen_range(0..2)).collect();
        (input, labels)
    };
    let inputs: Vec<(BertInput, Vec<usize>)> = (0..2).map(|_| batch(args.teacher_batch)).collect();
    let mut optimizer = Optimizer::adamw(2e-5, 0.01);
    let dropout_rng = DropoutRng::new(0);
    let trainable = vec![true; model.params_mut().len()];
    let mut train_step = |i: usize| {
        let (input, labels) = &inputs[i % 2];
        teacher_step(&mut model, &mut optimizer, &dropout_rng, &trainable, input, labels, 0.0);
    };
    // --teacher-steps 0 skips fine-tuning (its rate reads 0), e.g. for a GPU inference run.
    let mut train = 0.0;
    if args.teacher_steps > 0 {
        train_step(0);
        let start = Instant::now();
        for i in 0..args.teacher_steps {
            train_step(i);
        }
        train = (args.teacher_steps * args.teacher_batch) as f64 / start.elapsed().as_secs_f64();
    }
    let infer_inputs: Vec<BertInput> = (0..2).map(|_| batch(args.teacher_infer_batch).0).collect();
    // Each precision's weights are packed once, as `distill run` and `predict` do.
    let mut rates = Vec::new();
    for &precision in TeacherBackend::precisions(args.device) {
        let teacher = TeacherBackend::new(&model, args.device, precision)?;
        teacher.predict_logits(&infer_inputs[0])?;
        let start = Instant::now();
        for i in 0..args.teacher_infer_steps {
            teacher.predict_logits(&infer_inputs[i % 2])?; // reads the logits back: the clock sees finished work
        }
        rates.push((args.teacher_infer_steps * args.teacher_infer_batch) as f64 / start.elapsed().as_secs_f64());
    }
    Ok(Throughput {
        train_sentences_per_s: train,
        infer_sentences_per_s: rates[0],
        infer_bf16_sentences_per_s: rates.get(1).copied(),
        infer_int8_sentences_per_s: rates.get(2).copied(),
        ..Throughput::default()
    })
}

/// Runs `scripts/bench_student.py` with the same shapes; `None` if PyTorch is not there.
fn measure_torch_student(args: &BenchArgs, transfer: Option<&TransferSample>) -> Result<Option<Throughput>> {
    let mut flags = vec![
        ("--vocab", args.vocab.to_string()),
        ("--embedding-dim", args.embedding_dim.to_string()),
        ("--hidden", args.hidden.to_string()),
        ("--seq-len", args.seq_len.to_string()),
        ("--batch", args.batch.to_string()),
        ("--large-batch", args.large_batch.to_string()),
        ("--infer-batch", args.infer_batch.to_string()),
        ("--steps", args.steps.to_string()),
        ("--infer-steps", args.infer_steps.to_string()),
        ("--latency-steps", args.latency_steps.to_string()),
        ("--device", args.device.name().to_string()),
    ];
    if let Some(t) = transfer {
        flags.push(("--transfer", t.file.path().display().to_string()));
    }
    run_torch_script(args, "scripts/bench_student.py", &flags, false)
}

/// Runs `scripts/bench_teacher.py` (transformers' BertForSequenceClassification on the same dir).
fn measure_torch_teacher(args: &BenchArgs) -> Result<Option<Throughput>> {
    run_torch_script(
        args,
        "scripts/bench_teacher.py",
        &[
            ("--model-dir", expand_path(&args.teacher_dir).display().to_string()),
            ("--batch", args.teacher_batch.to_string()),
            ("--seq-len", args.teacher_seq_len.to_string()),
            ("--infer-batch", args.teacher_infer_batch.to_string()),
            ("--steps", args.teacher_steps.to_string()),
            ("--infer-steps", args.teacher_infer_steps.to_string()),
            ("--device", args.device.name().to_string()),
        ],
        args.device == DeviceName::Cuda,
    )
}

fn run_torch_script(args: &BenchArgs, script: &str, flags: &[(&str, String)], inference_only: bool) -> Result<Option<Throughput>> {
    let python = args
        .python
        .clone()
        .or_else(|| std::env::var_os("DISTILL_TORCH_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("python3"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(script);
    let mut command = std::process::Command::new(&python);
    command.arg(&script);
    for (flag, value) in flags {
        command.args([flag, value.as_str()]);
    }
    if inference_only {
        command.arg("--inference-only");
    }
    let output = command
        .args(["--threads", &rayon::current_num_threads().to_string()])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        if err.contains("No module named 'torch'") || err.contains("No module named 'transformers'") {
            return Ok(None);
        }
        anyhow::bail!("{} failed: {}", script.display(), err.trim());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or("");
    Ok(Some(serde_json::from_str(last).with_context(|| format!("unexpected output from the script: {last}"))?))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.model != BenchModel::Teacher {
        println!(
            "student on {}: vocab {}, embedding {}, hidden {} ×2, sequence {}, train batch {} and {}, inference batch {} and 1, {} threads, {} rounds",
            args.device.name(),
            args.vocab,
            args.embedding_dim,
            args.hidden,
            args.seq_len,
            args.batch,
            args.large_batch,
            args.infer_batch,
            rayon::current_num_threads(),
            args.rounds
        );
        let transfer = TransferSample::load(&args)?;
        let train_label = format!("train batch {} (Adadelta)", args.batch);
        compare(&args, &train_label, || measure_student(&args, transfer.as_ref()), || measure_torch_student(&args, transfer.as_ref()))?;
    }
    if args.model != BenchModel::Student {
        println!(
            "teacher on {}: {}, sequence {}, fine-tune batch {}, inference batch {}, {} threads, {} rounds",
            args.device.name(),
            expand_path(&args.teacher_dir).display(),
            args.teacher_seq_len,
            args.teacher_batch,
            args.teacher_infer_batch,
            rayon::current_num_threads(),
            args.rounds
        );
        compare(&args, "fine-tune (AdamW, CPU)", || measure_teacher(&args), || measure_torch_teacher(&args))?;
    }
    Ok(())
}

/// Alternating rounds of ours and PyTorch's measurement; prints each round and the medians.
fn compare(
    args: &BenchArgs,
    train_label: &str,
    ours_once: impl Fn() -> Result<Throughput>,
    torch_once: impl Fn() -> Result<Option<Throughput>>,
) -> Result<()> {
    let mut ours = Vec::new();
    let mut torch = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let o = ours_once()?;
        let t = if args.no_torch { None } else { torch_once()? };
        let reduced = |t: &Throughput| match (t.infer_bf16_sentences_per_s, t.infer_int8_sentences_per_s, t.latency_int8_ms) {
            (Some(b), Some(i), _) => format!(" (bf16 {b:.1}, int8 {i:.1})"),
            (None, Some(i), Some(ms)) => format!(" (int8 {i:.1}, batch 1 {ms:.3} ms)"),
            _ => String::new(),
        };
        let student_extras = |t: &Throughput| match (t.train_large_batch_sentences_per_s, t.latency_ms) {
            (Some(large), Some(ms)) => {
                let transfer = t.transfer_rows_per_s.map(|r| format!("; transfer set {r:.1} rows/s")).unwrap_or_default();
                format!(" (large batch {large:.1}; batch 1 {ms:.3} ms{transfer})")
            }
            _ => String::new(),
        };
        println!(
            "round {round}: distill train {:.1}{}, inference {:.1}{}{}",
            o.train_sentences_per_s,
            student_extras(&o),
            o.infer_sentences_per_s,
            reduced(&o),
            t.map(|t| format!(
                "; pytorch train {:.1}{}, inference {:.1}{}",
                t.train_sentences_per_s,
                student_extras(&t),
                t.infer_sentences_per_s,
                reduced(&t)
            ))
            .unwrap_or_default()
        );
        ours.push(o);
        torch.extend(t);
    }
    let med = |v: &[Throughput], f: fn(&Throughput) -> f64| median(v.iter().map(f).collect());
    let torch_med = |f: fn(&Throughput) -> f64| (!torch.is_empty()).then(|| med(&torch, f));
    println!("{:<28} {:>14} {:>14} {:>8}", "median sentences/s", "distill", "pytorch", "ratio");
    let line = |what: &str, a: f64, b: Option<f64>| match b {
        Some(b) => println!("{what:<28} {a:>14.1} {b:>14.1} {:>7.2}x", a / b),
        None => println!("{what:<28} {a:>14.1} {:>14} {:>8}", "n/a", "-"),
    };
    // `--teacher-steps 0` measures no training: no line rather than 0 against 0.
    let train = med(&ours, |t| t.train_sentences_per_s);
    if train > 0.0 {
        line(train_label, train, torch_med(|t| t.train_sentences_per_s));
    }
    let optional_median = |v: &[Throughput], get: fn(&Throughput) -> Option<f64>| {
        (!v.is_empty() && v.iter().all(|t| get(t).is_some())).then(|| median(v.iter().filter_map(get).collect()))
    };
    if let Some(mine) = optional_median(&ours, |t| t.train_large_batch_sentences_per_s) {
        line(&format!("train batch {}", args.large_batch), mine, optional_median(&torch, |t| t.train_large_batch_sentences_per_s));
    }
    if let Some(mine) = optional_median(&ours, |t| t.transfer_rows_per_s) {
        line("transfer set (rows/s)", mine, optional_median(&torch, |t| t.transfer_rows_per_s));
    }
    line("inference", med(&ours, |t| t.infer_sentences_per_s), torch_med(|t| t.infer_sentences_per_s));
    // Latency: lower is better, so the ratio is ours over PyTorch's (the target is ≤ 0.5).
    let latency_line = |what: &str, mine: f64, theirs: Option<f64>| match theirs {
        Some(theirs) => println!("{what:<28} {mine:>14.3} {theirs:>14.3} {:>7.2}x", mine / theirs),
        None => println!("{what:<28} {mine:>14.3} {:>14} {:>8}", "n/a", "-"),
    };
    if let Some(mine) = optional_median(&ours, |t| t.latency_ms) {
        latency_line("batch-1 latency (ms)", mine, optional_median(&torch, |t| t.latency_ms));
    }
    if let Some(mine) = optional_median(&ours, |t| t.latency_int8_ms) {
        latency_line("latency int8 (vs its like)", mine, optional_median(&torch, |t| t.latency_int8_ms));
        latency_line("latency int8 (vs torch f32)", mine, optional_median(&torch, |t| t.latency_ms));
    }
    // Reduced precision: each beside its like (PyTorch bf16 autocast, dynamic int8), and
    // beside PyTorch's FP32, the baseline users compare with.
    type ReducedRate = fn(&Throughput) -> Option<f64>;
    let reduced: [(&str, ReducedRate); 2] =
        [("bf16", |t| t.infer_bf16_sentences_per_s), ("int8", |t| t.infer_int8_sentences_per_s)];
    for (name, get) in reduced {
        if ours.iter().all(|t| get(t).is_some()) {
            let mine = median(ours.iter().filter_map(get).collect());
            let like = (!torch.is_empty() && torch.iter().all(|t| get(t).is_some())).then(|| median(torch.iter().filter_map(get).collect()));
            line(&format!("inference {name} (vs its like)"), mine, like);
            if let Some(fp32) = torch_med(|t| t.infer_sentences_per_s) {
                line(&format!("inference {name} (vs torch f32)"), mine, Some(fp32));
            }
        }
    }
    if torch.is_empty() && !args.no_torch {
        println!("PyTorch not found: pass --python PATH (a Python with torch and transformers) or set DISTILL_TORCH_PYTHON");
    }
    Ok(())
}
