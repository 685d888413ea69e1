//! The distillation stage: each loss against hand-computed values, and the teacher-logits
//! cache (a second run does no teacher inference, counted, not timed). This file holds the
//! only tests that read the process-wide inference counter, so nothing else runs beside them.

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

/// Runs a distill-only experiment on a real SST-2 slice twice, with the (not fine-tuned)
/// MiniLM encoder plus a seeded classifier as the teacher; the second run must read the
/// cached logits.
#[test]
fn teacher_logits_are_computed_once_and_then_read_from_the_cache() {
    let model_dir = distill::config::distill_home().join("models/all-MiniLM-L6-v2");
    if !model_dir.join("model.safetensors").is_file() {
        eprintln!("skipped: {} is missing; run scripts/setup", model_dir.display());
        return;
    }
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
    let before = TEACHER_INFERENCE_ROWS.load(Ordering::SeqCst);
    let first = distill::train::run_experiment(exp.clone()).unwrap();
    let computed = TEACHER_INFERENCE_ROWS.load(Ordering::SeqCst) - before;
    assert!(computed > 48 && computed <= 48 * 3, "transfer rows through the teacher: {computed}");
    let cache: Vec<_> = std::fs::read_dir(out.path().join("cache")).unwrap().collect();
    assert_eq!(cache.len(), 1);

    let mut again = exp.clone();
    again.name = "distill-slice-again".into();
    again.distill.as_mut().unwrap().lr = 0.5; // another student setting, same transfer set
    let second = distill::train::run_experiment(again).unwrap();
    assert_eq!(TEACHER_INFERENCE_ROWS.load(Ordering::SeqCst) - before, computed, "the second run must not run the teacher");
    assert_eq!(second[0].stage, "distill");

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

/// Stages are reused by key across runs: a second run of the same file with another
/// `distill.alpha` reuses the teacher and the student alone and trains only the distill
/// stage; a run listing only the student stage (another name, another alpha) reuses it and
/// links it into its own run dir. `results.csv` gets one row per stage actually trained.
#[test]
fn finished_stages_are_reused_by_key_across_runs_and_stage_lists() {
    let model_dir = distill::config::distill_home().join("models/all-MiniLM-L6-v2");
    if !model_dir.join("model.safetensors").is_file() {
        eprintln!("skipped: {} is missing; run scripts/setup", model_dir.display());
        return;
    }
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/SST-2");
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("reuse.toml");
    std::fs::write(
        &file,
        format!(
            r#"name = "reuse"
task = "sst2"
stages = ["teacher", "student", "distill"]
out_dir = "{out}"
[data]
dir = "{data}"
train_limit = 48
dev_limit = 32
[vocab]
kind = "wordpiece"
tokenizer = "{model}"
[teacher]
model = "{model}"
max_seq_len = 32
batch_size = 16
lr = 5e-5
epochs = 1
[augment]
p_mask = 0.1
n_iter = 1
[student]
embedding_dim = 16
hidden_size = 16
dropout = 0.1
optimizer = "adadelta"
lr = 1.0
batch_size = 16
epochs = 1
[distill]
alpha = 0.5
optimizer = "adadelta"
lr = 1.0
batch_size = 16
epochs = 1
dropout = 0.1
"#,
            out = out.path().display(),
            data = data.display(),
            model = model_dir.display()
        ),
    )
    .unwrap();
    let results = out.path().join("results.csv");
    let stages_in_results = || -> Vec<String> { distill::report::read_results(&results).unwrap().into_iter().map(|r| r.stage).collect() };
    let run = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        distill::train::run_experiment(distill::config::Experiment::load(&file, &sets).unwrap()).unwrap()
    };

    let first = run(&[]);
    assert_eq!(stages_in_results(), ["teacher", "student", "distill"]);

    let second = run(&["distill.alpha=0.3"]);
    assert_ne!(first[0].run_dir, second[0].run_dir, "another config, another run dir");
    assert_eq!(stages_in_results(), ["teacher", "student", "distill", "distill"], "only the distill stage trains again");
    for (a, b) in first.iter().zip(&second).take(2) {
        assert_eq!((a.dev_accuracy, a.train_time_s), (b.dev_accuracy, b.train_time_s), "{} reused", a.stage);
    }
    let second_dir = Path::new(&second[0].run_dir);
    assert!(second_dir.join("student").is_symlink() && second_dir.join("student/model.safetensors").is_file());
    assert!(!second_dir.join("distill").is_symlink());

    let third = run(&["name=\"reuse-student-only\"", "stages=[\"student\"]", "distill.alpha=0.9"]);
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].dev_accuracy, first[1].dev_accuracy);
    assert_eq!(stages_in_results().len(), 4, "a reused stage adds no results row");
    let third_dir = Path::new(&third[0].run_dir);
    let model = distill::models::bilstm::BiLstmStudent::load(&third_dir.join("student/model.safetensors"), &Cpu::default());
    assert!(model.is_ok(), "the linked student loads from the new run dir");
}
