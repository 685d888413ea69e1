//! The GPU student against the CPU one. The loss gradients (computed on the host) are
//! checked here against dfdx; the GPU forward/backward/optimizer parity needs a GPU and
//! says "skipped: no GPU" without one (scripts/gpu-check runs it on a lent machine).

use dfdx::prelude::*;
use distill::config::DistillLoss;
use distill::gpu::student::{loss_and_grad, BatchTargets};
use distill::gpu::Gpu;
use distill::train::one_hot;
use distill::train::student::{distill_loss, LossSpec};

const LOGITS: [f32; 6] = [0.3, -1.2, 2.0, 0.5, -0.7, -0.1];
const TEACHER: [f32; 6] = [1.0, -1.0, 0.2, 0.4, -2.0, 1.5];
const LABELS: [usize; 3] = [0, 0, 1];

/// Loss and gradient of the CPU path (dfdx's tape) for the same logits.
fn cpu_loss(targets: Option<LossSpec>) -> (f32, Vec<f32>) {
    let dev = Cpu::default();
    let logits: Tensor<(usize, usize), f32, Cpu> = dev.tensor_from_vec(LOGITS.to_vec(), (3, 2));
    let traced = logits.leaky_trace();
    let loss = match targets {
        None => cross_entropy_with_logits_loss(traced, one_hot(&dev, &LABELS, 2)),
        Some(spec) => distill_loss(traced, &TEACHER, &LABELS, spec),
    };
    let value = loss.array();
    let grads = loss.backward();
    (value, grads.get(&logits).as_vec())
}

fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "{what}[{i}]: {x} vs {y} (tolerance {tol})");
    }
}

#[test]
fn host_loss_gradients_match_the_cpu_path() {
    let (loss, grad) = cpu_loss(None);
    let host = loss_and_grad(&LOGITS, &LABELS, &BatchTargets::Gold, 2);
    assert!((host.loss - loss).abs() < 1e-5, "gold CE: {} vs {loss}", host.loss);
    assert_close(&host.d_logits, &grad, 1e-6, "gold CE gradient");
    for (kind, alpha, temperature) in
        [(DistillLoss::Mse, 0.0, 1.0), (DistillLoss::Kl, 0.0, 2.0), (DistillLoss::Mse, 0.3, 1.0), (DistillLoss::Kl, 0.5, 3.0), (DistillLoss::Ce, 0.0, 1.0)]
    {
        let spec = LossSpec { kind, alpha, temperature };
        let (loss, grad) = cpu_loss(Some(spec));
        let host = loss_and_grad(&LOGITS, &LABELS, &BatchTargets::Teacher { logits: &TEACHER, loss: spec }, 2);
        assert!((host.loss - loss).abs() < 1e-5, "{spec:?}: loss {} vs {loss}", host.loss);
        assert_close(&host.d_logits, &grad, 1e-6, &format!("{spec:?} gradient"));
    }
}

/// CPU vs GPU from the same weights (see `distill::gpu::check` for the cases and tolerances).
#[test]
fn gpu_student_matches_cpu() {
    if let Err(e) = Gpu::new() {
        eprintln!("skipped: no GPU ({e:#})");
        return;
    }
    for line in distill::gpu::check::student_parity().unwrap_or_else(|e| panic!("{e:#}")) {
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
    distill::gpu::check::write_random_minilm(dir.path()).unwrap();
    let dev = Cpu::default();
    let model = BertForSequenceClassification::load(dir.path(), 2, &dev, &mut rand::SeedableRng::seed_from_u64(0)).unwrap();
    assert_eq!((model.bert.encoder_layers.len(), model.bert.config.hidden_size), (6, 384));
    let logits = model.predict_logits(&BertInput::new(&[(vec![101, 2000, 102], vec![0; 3]), (vec![101, 102], vec![0; 2])], 0));
    assert!(logits.len() == 4 && logits.iter().all(|v| v.is_finite()), "{logits:?}");
    if Gpu::new().is_err() {
        let e = distill::gpu::check::teacher_parity(dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("no GPU found"), "{e:#}");
    }
}
