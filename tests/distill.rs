//! The distillation stage: each loss against hand-computed values, and the teacher-logits
//! cache (a second run does no teacher inference, counted, not timed). This file holds the
//! only tests that read the process-wide inference counter, so nothing else runs beside them.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;

use dfdx::prelude::*;
use distill::config::DistillLoss;
use distill::inference::TEACHER_INFERENCE_ROWS;
use distill::loss::{distill_loss, LossSpec};

/// Loss value and d loss / d logits for one row of logits.
fn loss_and_grad(logits: [f32; 2], teacher: [f32; 2], label: usize, spec: LossSpec) -> (f32, Vec<f32>) {
    let dev = Cpu::default();
    let leaf = dev.tensor_from_vec(logits.to_vec(), (1usize, 2usize));
    let loss = distill_loss(leaf.leaky_trace(), &teacher, &[label], spec);
    let value = loss.array();
    let grads = loss.backward();
    (value, grads.get(&leaf).as_vec())
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() < 1e-5
}

#[test]
fn mse_kl_ce_and_the_alpha_mix_match_hand_computed_values() {
    let spec = |kind, alpha, temperature| LossSpec { kind, alpha, temperature };
    // MSE over the 2 logits: ((1−0)² + (2−4)²) / 2 = 2.5; gradient 2(s − t)/2 = (1, −2).
    let (v, g) = loss_and_grad([1.0, 2.0], [0.0, 4.0], 0, spec(DistillLoss::Mse, 0.0, 1.0));
    assert!(close(v, 2.5) && close(g[0], 1.0) && close(g[1], -2.0), "{v} {g:?}");

    // KL at T = 2: teacher logits (0, 2·ln 3) soften to (1/4, 3/4); student (0, 0) to (1/2, 1/2).
    // KL = 1/4·ln(1/2) + 3/4·ln(3/2) = 0.1308120; times T² = 0.5232481.
    // Gradient: T²·(p_s − p_t)/T = 2·(1/4, −1/4) = (0.5, −0.5).
    let (v, g) = loss_and_grad([0.0, 0.0], [0.0, 2.0 * 3f32.ln()], 1, spec(DistillLoss::Kl, 0.0, 2.0));
    assert!(close(v, 0.523_248_1) && close(g[0], 0.5) && close(g[1], -0.5), "{v} {g:?}");

    // CE on the gold label alone: −ln(1/2) = 0.6931472; gradient softmax − one-hot = (0.5, −0.5).
    let (v, g) = loss_and_grad([0.0, 0.0], [9.0, -9.0], 1, spec(DistillLoss::Ce, 0.0, 1.0));
    assert!(close(v, std::f32::consts::LN_2) && close(g[0], 0.5) && close(g[1], -0.5), "{v} {g:?}");

    // α = 0.25: 0.25·ln 2 + 0.75·MSE((0,0),(0,2)) = 0.1732868 + 1.5 = 1.6732868;
    // gradient 0.25·(0.5, −0.5) + 0.75·(0, −2) = (0.125, −1.625).
    let (v, g) = loss_and_grad([0.0, 0.0], [0.0, 2.0], 1, spec(DistillLoss::Mse, 0.25, 1.0));
    assert!(close(v, 1.673_286_8) && close(g[0], 0.125) && close(g[1], -1.625), "{v} {g:?}");
}

/// Runs a distill-only experiment on a real SST-2 slice twice, with a small random BERT (not
/// fine-tuned) plus a seeded classifier as the teacher; the second run must read the cached
/// logits.
#[test]
fn teacher_logits_are_computed_once_and_then_read_from_the_cache() {
    let Some((_assets, model_dir)) = common::tiny_teacher() else { return };
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/SST-2");
    let out = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"name = "distill-slice"
task = "sst2"
stages = ["distill"]
out_dir = "{out}"
[data]
dir = "{data}"
train_limit = 48
dev_limit = 32
[vocab]
kind = "wordpiece"
tokenizer = "{model}"
[augment]
p_mask = 0.1
p_ng = 0.25
n_iter = 2
[student]
embedding_dim = 16
hidden_size = 16
dropout = 0.1
optimizer = "adadelta"
lr = 1.0
batch_size = 16
epochs = 1
[distill]
teacher = "{model}"
optimizer = "adadelta"
lr = 1.0
batch_size = 16
epochs = 2
dropout = 0.1
"#,
        out = out.path().display(),
        data = data.display(),
        model = model_dir.display()
    );
    let exp = distill::config::Experiment::parse(&toml, "slice.toml", &[]).unwrap();
    let cached = || distill::train::distill::teacher_logits_cached(&exp);
    assert_eq!(cached(), Some(false), "nothing cached yet");
    let before = TEACHER_INFERENCE_ROWS.load(Ordering::SeqCst);
    let first = distill::train::run_experiment(exp.clone()).unwrap();
    let computed = TEACHER_INFERENCE_ROWS.load(Ordering::SeqCst) - before;
    assert!(computed > 48 && computed <= 48 * 3, "transfer rows through the teacher: {computed}");
    let cache: Vec<_> = std::fs::read_dir(out.path().join("cache")).unwrap().collect();
    assert_eq!(cache.len(), 1);
    assert_eq!(cached(), Some(true), "`distill reproduce` sees the cache the stage wrote");

    let mut again = exp.clone();
    again.name = "distill-slice-again".into();
    again.distill.as_mut().unwrap().lr = 0.5; // another student setting, same transfer set
    let second = distill::train::run_experiment(again).unwrap();
    assert_eq!(TEACHER_INFERENCE_ROWS.load(Ordering::SeqCst) - before, computed, "the second run must not run the teacher");
    assert_eq!(second[0].stage, "distill");

    // Student seeds that share `augment.seed` share the transfer set and its logits: the
    // first of them computes them (a new transfer set), the second reads the cache.
    let mut seeded = exp.clone();
    seeded.name = "distill-slice-seeded".into();
    seeded.augment.seed = Some(5);
    let at = TEACHER_INFERENCE_ROWS.load(Ordering::SeqCst);
    distill::train::run_experiment(seeded.clone()).unwrap();
    assert!(TEACHER_INFERENCE_ROWS.load(Ordering::SeqCst) > at, "augment.seed = 5 draws another transfer set");
    let at = TEACHER_INFERENCE_ROWS.load(Ordering::SeqCst);
    seeded.seed = 2;
    let other_seed = distill::train::run_experiment(seeded).unwrap();
    assert_eq!(TEACHER_INFERENCE_ROWS.load(Ordering::SeqCst), at, "another training seed, the same transfer set: no teacher pass");
    assert_eq!(other_seed[0].stage, "distill");

    // A different transfer set (another n_iter) is a cache miss.
    let mut more = exp;
    more.name = "distill-slice-more".into();
    more.augment.n_iter = 3;
    distill::train::run_experiment(more).unwrap();
    assert!(TEACHER_INFERENCE_ROWS.load(Ordering::SeqCst) - before > computed);

    let run_dir = Path::new(&first[0].run_dir);
    let summary = std::fs::read_to_string(run_dir.join("distill/summary.csv")).unwrap();
    assert!(summary.starts_with("teacher_params,student_params,params_ratio"), "{summary}");
    assert!(run_dir.join("distill/model.safetensors").is_file());
}
