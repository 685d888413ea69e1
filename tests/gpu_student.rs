//! The GPU student against the CPU one. The GPU path takes its loss and logits gradient from
//! `distill::loss::loss_and_grad` (the host entry point of the one loss definition); it is
//! checked here against the CPU tape and against finite differences. The GPU
//! forward/backward/optimizer parity needs a GPU and says "skipped: no GPU" without one
//! (scripts/gpu-check runs it on a lent machine).

use dfdx::prelude::*;
use distill::config::DistillLoss;
use distill::gpu::Gpu;
use distill::loss::{loss, loss_and_grad, LossSpec, Targets};

const LOGITS: [f32; 6] = [0.3, -1.2, 2.0, 0.5, -0.7, -0.1];
const TEACHER: [f32; 6] = [1.0, -1.0, 0.2, 0.4, -2.0, 1.5];
const LABELS: [usize; 3] = [0, 0, 1];

/// Loss and gradient of the CPU path (dfdx's tape) for the same logits.
fn cpu_loss(targets: &Targets) -> (f32, Vec<f32>) {
    let dev = Cpu::default();
    let logits: Tensor<(usize, usize), f32, Cpu> = dev.tensor_from_vec(LOGITS.to_vec(), (3, 2));
    let value = loss(logits.leaky_trace(), &LABELS, targets);
    let v = value.array();
    let grads = value.backward();
    (v, grads.get(&logits).as_vec())
}

fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "{what}[{i}]: {x} vs {y} (tolerance {tol})");
    }
}

#[test]
fn host_loss_gradients_match_the_cpu_path_and_finite_differences() {
    let mut cases = vec![Targets::Gold];
    for (kind, alpha, temperature) in
        [(DistillLoss::Mse, 0.0, 1.0), (DistillLoss::Kl, 0.0, 2.0), (DistillLoss::Mse, 0.3, 1.0), (DistillLoss::Kl, 0.5, 3.0), (DistillLoss::Ce, 0.0, 1.0)]
    {
        cases.push(Targets::Teacher { logits: &TEACHER, loss: LossSpec { kind, alpha, temperature } });
    }
    for targets in &cases {
        let (loss_value, grad) = cpu_loss(targets);
        let host = loss_and_grad(&LOGITS, &LABELS, targets, 2);
        assert!((host.loss - loss_value).abs() < 1e-5, "{targets:?}: loss {} vs {loss_value}", host.loss);
        assert_close(&host.d_logits, &grad, 1e-6, &format!("{targets:?} gradient"));
        // Central differences in f64 around the f32 logits.
        let h = 1e-2f32;
        let numeric: Vec<f32> = (0..LOGITS.len())
            .map(|i| {
                let at = |delta: f32| {
                    let mut z = LOGITS;
                    z[i] += delta;
                    loss_and_grad(&z, &LABELS, targets, 2).loss as f64
                };
                ((at(h) - at(-h)) / (2.0 * h as f64)) as f32
            })
            .collect();
        assert_close(&host.d_logits, &numeric, 2e-3, &format!("{targets:?} gradient vs finite differences"));
    }
}

/// CPU vs GPU from the same weights (see `distill::backend::parity` for the cases and tolerances).
#[test]
fn gpu_student_matches_cpu() {
    if let Err(e) = Gpu::new() {
        eprintln!("skipped: no GPU ({e:#})");
        return;
    }
    for line in distill::backend::parity::student_parity().unwrap_or_else(|e| panic!("{e:#}")) {
        eprintln!("{line}");
    }
}

/// The random MiniLM-shaped teacher that `distill gpu-check` writes for the GPU machines
/// (which cannot reach a model hub) is a valid HF BERT dir; and the teacher parity check
/// says it needs a GPU here.
#[test]
fn random_minilm_dir_loads() {
    use distill::models::bert::{BertForSequenceClassification, BertInput};
    let dir = tempfile::tempdir().unwrap();
    distill::backend::parity::write_random_minilm(dir.path()).unwrap();
    let dev = Cpu::default();
    let model = BertForSequenceClassification::load(dir.path(), 2, &dev, &mut rand::SeedableRng::seed_from_u64(0)).unwrap();
    assert_eq!((model.bert.encoder_layers.len(), model.bert.config.hidden_size), (6, 384));
    let logits = model.predict_logits(&BertInput::new(&[(vec![101, 2000, 102], vec![0; 3]), (vec![101, 102], vec![0; 2])], 0));
    assert!(logits.len() == 4 && logits.iter().all(|v| v.is_finite()), "{logits:?}");
    if Gpu::new().is_err() {
        let e = distill::backend::parity::teacher_parity(dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("no GPU found"), "{e:#}");
    }
}
