//! `distill bench`: Bi-LSTM student training and inference sentences/s, with
//! `scripts/bench_student.py` measuring the same model in PyTorch in the same run.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::OptimizerName;
use crate::models::bilstm::{BiLstmStudent, StudentInput, StudentShape, TokenBatch};
use crate::optim::{Optimizer, OptimizerConfig};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
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
}

/// Sentences per second of one measurement.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct Throughput {
    pub train_sentences_per_s: f64,
    pub infer_sentences_per_s: f64,
}

fn random_input(rng: &mut StdRng, args: &BenchArgs, batch: usize) -> StudentInput {
    let seqs: Vec<Vec<u32>> = (0..batch)
        .map(|_| (0..args.seq_len).map(|_| rng.gen_range(1..args.vocab as u32)).collect())
        .collect();
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    StudentInput { tokens: TokenBatch::new(&refs, 0), examples: batch }
}

/// Measures the Rust student on random full-length batches.
pub fn measure_student(args: &BenchArgs) -> Throughput {
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
    let mut model = BiLstmStudent::new(shape, 0.4, &dev, &mut rng);
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
    Throughput { train_sentences_per_s: train, infer_sentences_per_s: infer }
}

/// Runs `scripts/bench_student.py` with the same shapes; `None` if PyTorch is not there.
fn measure_torch(args: &BenchArgs) -> Result<Option<Throughput>> {
    let python = args
        .python
        .clone()
        .or_else(|| std::env::var_os("DISTILL_TORCH_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("python3"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_student.py");
    let output = std::process::Command::new(&python)
        .arg(&script)
        .args(["--vocab", &args.vocab.to_string()])
        .args(["--embedding-dim", &args.embedding_dim.to_string()])
        .args(["--hidden", &args.hidden.to_string()])
        .args(["--seq-len", &args.seq_len.to_string()])
        .args(["--batch", &args.batch.to_string()])
        .args(["--infer-batch", &args.infer_batch.to_string()])
        .args(["--steps", &args.steps.to_string()])
        .args(["--infer-steps", &args.infer_steps.to_string()])
        .args(["--threads", &rayon::current_num_threads().to_string()])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        if err.contains("No module named 'torch'") {
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
    println!(
        "student: vocab {}, embedding {}, hidden {} ×2, sequence {}, train batch {}, inference batch {}, {} threads, {} rounds",
        args.vocab,
        args.embedding_dim,
        args.hidden,
        args.seq_len,
        args.batch,
        args.infer_batch,
        rayon::current_num_threads(),
        args.rounds
    );
    let mut ours = Vec::new();
    let mut torch = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let o = measure_student(&args);
        let t = if args.no_torch { None } else { measure_torch(&args)? };
        println!(
            "round {round}: distill train {:.1}, inference {:.1}{}",
            o.train_sentences_per_s,
            o.infer_sentences_per_s,
            t.map(|t| format!("; pytorch train {:.1}, inference {:.1}", t.train_sentences_per_s, t.infer_sentences_per_s))
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
    line("train (Adadelta)", med(&ours, |t| t.train_sentences_per_s), torch_med(|t| t.train_sentences_per_s));
    line("inference", med(&ours, |t| t.infer_sentences_per_s), torch_med(|t| t.infer_sentences_per_s));
    if torch.is_empty() && !args.no_torch {
        println!("PyTorch not found: pass --python PATH (a Python with torch) or set DISTILL_TORCH_PYTHON");
    }
    Ok(())
}
