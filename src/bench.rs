//! `distill bench`: training and inference sentences/s of the Bi-LSTM student and the BERT
//! teacher, with `scripts/bench_student.py` / `scripts/bench_teacher.py` measuring the same
//! models and shapes in PyTorch in the same run.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{expand_path, OptimizerName};
use crate::models::bert::{BertForSequenceClassification, BertInput};
use crate::models::bert_inference::BertInference;
use crate::models::packed::Precision;
use crate::models::bilstm::{BiLstmStudent, StudentInput, StudentShape, TokenBatch};
use crate::train::one_hot;
use crate::optim::{Optimizer, OptimizerConfig};

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
    /// Where the student runs: "cpu", or "cuda" (the GPU student; PyTorch then uses cuDNN).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    pub device: String,
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
    /// Inference batch size.
    #[arg(long, default_value_t = 256)]
    pub infer_batch: usize,
    /// Timed training steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Timed inference batches (after 2 warm-up batches).
    #[arg(long, default_value_t = 30)]
    pub infer_steps: usize,
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
    /// Timed fine-tuning steps (after 1 warm-up step).
    #[arg(long, default_value_t = 8)]
    pub teacher_steps: usize,
    /// Timed inference batches (after 1 warm-up batch).
    #[arg(long, default_value_t = 4)]
    pub teacher_infer_steps: usize,
}

/// Sentences per second of one measurement.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct Throughput {
    pub train_sentences_per_s: f64,
    pub infer_sentences_per_s: f64,
    /// Teacher inference in reduced precision: ours in BF16 / INT8; PyTorch's bf16 autocast
    /// and dynamic int8 quantisation (`quantize_dynamic` on the Linear layers).
    #[serde(default)]
    pub infer_bf16_sentences_per_s: Option<f64>,
    #[serde(default)]
    pub infer_int8_sentences_per_s: Option<f64>,
}

impl Throughput {
    fn new(train: f64, infer: f64) -> Throughput {
        Throughput { train_sentences_per_s: train, infer_sentences_per_s: infer, infer_bf16_sentences_per_s: None, infer_int8_sentences_per_s: None }
    }
}

fn random_input(rng: &mut StdRng, args: &BenchArgs, batch: usize) -> StudentInput {
    let seqs: Vec<Vec<u32>> = (0..batch)
        .map(|_| (0..args.seq_len).map(|_| rng.gen_range(1..args.vocab as u32)).collect())
        .collect();
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    StudentInput { tokens: TokenBatch::new(&refs, 0), examples: batch }
}

/// The benchmarked student (the `bench_student.py` module's shape, dropout 0.4), its CPU
/// device and the random generator for its batches.
fn bench_student_model(args: &BenchArgs) -> (Cpu, StdRng, BiLstmStudent) {
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
    (dev, rng, model)
}

/// Measures the Rust student on random full-length batches.
pub fn measure_student(args: &BenchArgs) -> Throughput {
    let (dev, mut rng, mut model) = bench_student_model(args);
    let mut optimizer = Optimizer::new(OptimizerConfig::new(OptimizerName::Adadelta, 1.0));
    let trainable = vec![true; model.params_mut().len()];
    let inputs: Vec<StudentInput> = (0..4).map(|_| random_input(&mut rng, args, args.batch)).collect();
    let targets: Vec<Tensor<(usize, usize), f32, Cpu>> = (0..4)
        .map(|_| {
            let mut t = vec![0f32; args.batch * 2];
            for r in 0..args.batch {
                t[r * 2 + rng.gen_range(0..2)] = 1.0;
            }
            dev.tensor_from_vec(t, (args.batch, 2))
        })
        .collect();
    let mut train_step = |i: usize| {
        let input = &inputs[i % 4];
        let logits = model.forward_train(input);
        let loss = cross_entropy_with_logits_loss(logits, targets[i % 4].clone());
        let mut grads = loss.backward();
        let rows = input.tokens.distinct_ids();
        optimizer.step(&mut model.params_mut(), &trainable, &[Some(rows.as_slice())], &mut grads);
    };
    for i in 0..2 {
        train_step(i);
    }
    let start = Instant::now();
    for i in 0..args.steps {
        train_step(i);
    }
    let train = (args.steps * args.batch) as f64 / start.elapsed().as_secs_f64();

    let infer_inputs: Vec<StudentInput> = (0..4).map(|_| random_input(&mut rng, args, args.infer_batch)).collect();
    for input in infer_inputs.iter().take(2) {
        model.predict_logits(input);
    }
    let start = Instant::now();
    for i in 0..args.infer_steps {
        model.predict_logits(&infer_inputs[i % 4]);
    }
    let infer = (args.infer_steps * args.infer_batch) as f64 / start.elapsed().as_secs_f64();
    Throughput::new(train, infer)
}

/// Measures the GPU student (same model, optimizer and batches as [`measure_student`]).
pub fn measure_student_gpu(args: &BenchArgs) -> Result<Throughput> {
    use crate::gpu::student::{BatchTargets, GpuStudent};
    let (_, mut rng, mut model) = bench_student_model(args);
    let mut gpu = GpuStudent::new(crate::gpu::Gpu::new()?, &mut model, OptimizerConfig::new(OptimizerName::Adadelta, 1.0), 0)?;
    let inputs: Vec<StudentInput> = (0..4).map(|_| random_input(&mut rng, args, args.batch)).collect();
    let labels: Vec<Vec<usize>> = (0..4).map(|_| (0..args.batch).map(|_| rng.gen_range(0..2)).collect()).collect();
    // Each step reads its loss back, so the clock sees finished work.
    let mut train_step = |i: usize| gpu.train_step(&inputs[i % 4], &labels[i % 4], &BatchTargets::Gold, 0.0, true);
    for i in 0..2 {
        train_step(i)?;
    }
    let start = Instant::now();
    for i in 0..args.steps {
        train_step(i)?;
    }
    let train = (args.steps * args.batch) as f64 / start.elapsed().as_secs_f64();
    let infer_inputs: Vec<StudentInput> = (0..4).map(|_| random_input(&mut rng, args, args.infer_batch)).collect();
    for input in infer_inputs.iter().take(2) {
        gpu.predict_logits(input)?;
    }
    let start = Instant::now();
    for i in 0..args.infer_steps {
        gpu.predict_logits(&infer_inputs[i % 4])?;
    }
    let infer = (args.infer_steps * args.infer_batch) as f64 / start.elapsed().as_secs_f64();
    Ok(Throughput::new(train, infer))
}

/// `rows` random full-length texts of `seq` tokens (single segment).
fn random_bert_input(rng: &mut StdRng, vocab: u32, rows: usize, seq: usize) -> BertInput {
    let seqs: Vec<(Vec<u32>, Vec<u32>)> =
        (0..rows).map(|_| ((0..seq).map(|_| rng.gen_range(1..vocab)).collect(), vec![0; seq])).collect();
    BertInput::new(&seqs, 0)
}

/// Measures BERT fine-tuning (AdamW, all parameters) and inference on random full-length batches.
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
    let mut train_step = |i: usize| {
        let (input, labels) = &inputs[i % 2];
        let logits = model.forward_train(input);
        let loss = cross_entropy_with_logits_loss(logits, one_hot(&dev, labels, 2));
        let mut grads = loss.backward();
        let mut params = model.params_mut();
        let trainable = vec![true; params.len()];
        optimizer.step(&mut params, &trainable, &[], &mut grads);
    };
    train_step(0);
    let start = Instant::now();
    for i in 0..args.teacher_steps {
        train_step(i);
    }
    let train = (args.teacher_steps * args.teacher_batch) as f64 / start.elapsed().as_secs_f64();
    let infer_inputs: Vec<BertInput> = (0..2).map(|_| batch(args.teacher_infer_batch).0).collect();
    // Each precision's weights are packed once, as `distill run` and `predict` do.
    let infer = |precision: Precision| {
        let teacher = BertInference::new(&model, precision);
        teacher.logits(&infer_inputs[0]);
        let start = Instant::now();
        for i in 0..args.teacher_infer_steps {
            teacher.logits(&infer_inputs[i % 2]);
        }
        (args.teacher_infer_steps * args.teacher_infer_batch) as f64 / start.elapsed().as_secs_f64()
    };
    Ok(Throughput {
        train_sentences_per_s: train,
        infer_sentences_per_s: infer(Precision::F32),
        infer_bf16_sentences_per_s: Some(infer(Precision::Bf16)),
        infer_int8_sentences_per_s: Some(infer(Precision::Int8)),
    })
}

/// Measures GPU teacher inference (no fine-tuning on the GPU: its training rate is 0).
pub fn measure_teacher_gpu(args: &BenchArgs) -> Result<Throughput> {
    let dev = Cpu::seed_from_u64(0);
    let mut rng = StdRng::seed_from_u64(0);
    let model = BertForSequenceClassification::load(&expand_path(&args.teacher_dir), 2, &dev, &mut rng)?;
    let gpu = crate::gpu::bert::GpuBert::new(crate::gpu::Gpu::new()?, &model)?;
    let vocab = model.bert.config.vocab_size as u32;
    let inputs: Vec<BertInput> =
        (0..2).map(|_| random_bert_input(&mut rng, vocab, args.teacher_infer_batch, args.teacher_seq_len)).collect();
    gpu.predict_logits(&inputs[0])?;
    let start = Instant::now();
    for i in 0..args.teacher_infer_steps {
        gpu.predict_logits(&inputs[i % 2])?; // reads the logits back: the clock sees finished work
    }
    let infer = (args.teacher_infer_steps * args.teacher_infer_batch) as f64 / start.elapsed().as_secs_f64();
    Ok(Throughput::new(0.0, infer))
}

/// Runs `scripts/bench_student.py` with the same shapes; `None` if PyTorch is not there.
fn measure_torch_student(args: &BenchArgs) -> Result<Option<Throughput>> {
    run_torch_script(
        args,
        "scripts/bench_student.py",
        &[
            ("--vocab", args.vocab.to_string()),
            ("--embedding-dim", args.embedding_dim.to_string()),
            ("--hidden", args.hidden.to_string()),
            ("--seq-len", args.seq_len.to_string()),
            ("--batch", args.batch.to_string()),
            ("--infer-batch", args.infer_batch.to_string()),
            ("--steps", args.steps.to_string()),
            ("--infer-steps", args.infer_steps.to_string()),
            ("--device", args.device.clone()),
        ],
        false,
    )
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
            ("--device", args.device.clone()),
        ],
        args.device == "cuda",
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
            "student on {}: vocab {}, embedding {}, hidden {} ×2, sequence {}, train batch {}, inference batch {}, {} threads, {} rounds",
            args.device,
            args.vocab,
            args.embedding_dim,
            args.hidden,
            args.seq_len,
            args.batch,
            args.infer_batch,
            rayon::current_num_threads(),
            args.rounds
        );
        let ours = || if args.device == "cuda" { measure_student_gpu(&args) } else { Ok(measure_student(&args)) };
        compare(&args, "train (Adadelta)", ours, || measure_torch_student(&args))?;
    }
    if args.model != BenchModel::Student {
        println!(
            "teacher on {}: {}, sequence {}, fine-tune batch {}, inference batch {}, {} threads, {} rounds",
            args.device,
            expand_path(&args.teacher_dir).display(),
            args.teacher_seq_len,
            args.teacher_batch,
            args.teacher_infer_batch,
            rayon::current_num_threads(),
            args.rounds
        );
        if args.device == "cuda" {
            // Inference only: fine-tuning runs on the CPU (its line reads 0).
            compare(&args, "fine-tune (CPU only)", || measure_teacher_gpu(&args), || measure_torch_teacher(&args))?;
        } else {
            compare(&args, "fine-tune (AdamW)", || measure_teacher(&args), || measure_torch_teacher(&args))?;
        }
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
        let reduced = |t: &Throughput| match (t.infer_bf16_sentences_per_s, t.infer_int8_sentences_per_s) {
            (Some(b), Some(i)) => format!(" (bf16 {b:.1}, int8 {i:.1})"),
            _ => String::new(),
        };
        println!(
            "round {round}: distill train {:.1}, inference {:.1}{}{}",
            o.train_sentences_per_s,
            o.infer_sentences_per_s,
            reduced(&o),
            t.map(|t| format!("; pytorch train {:.1}, inference {:.1}{}", t.train_sentences_per_s, t.infer_sentences_per_s, reduced(&t)))
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
    line(train_label, med(&ours, |t| t.train_sentences_per_s), torch_med(|t| t.train_sentences_per_s));
    line("inference", med(&ours, |t| t.infer_sentences_per_s), torch_med(|t| t.infer_sentences_per_s));
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
