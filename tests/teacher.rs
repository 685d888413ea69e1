//! The BERT teacher: gradients of the fused ops against finite differences, saving as an HF
//! dir and loading it back, the fine-tuning schedule and batching, and a short real run.

use std::path::Path;

use dfdx::prelude::*;
use distill::data::Task;
use distill::models::bert::{BertForSequenceClassification, BertInput, Dropout};
use distill::loss::mean_cross_entropy;
use distill::optim::warmup_linear_lr;
use distill::ops::dropout::DropoutRng;
use distill::train::batches::{bucketed_batches, shuffled_batches};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A tiny random BERT dir (2 layers, hidden 8, 2 heads), without dropout, with a vocab.txt.
fn tiny_random_dir(seed: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"{"model_type": "bert", "vocab_size": 12, "hidden_size": 8, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 16, "type_vocab_size": 2,
        "layer_norm_eps": 1e-12, "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}"#;
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "a", "very", "not", "."];
    std::fs::write(dir.path().join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut add = |name: String, dims: Vec<usize>, around: f32, rng: &mut StdRng| {
        let n: usize = dims.iter().product();
        let bytes = (0..n).flat_map(|_| (around + rng.gen_range(-0.5f32..0.5)).to_le_bytes()).collect();
        tensors.push((name, dims, bytes));
    };
    add("embeddings.word_embeddings.weight".into(), vec![12, 8], 0.0, &mut rng);
    add("embeddings.position_embeddings.weight".into(), vec![16, 8], 0.0, &mut rng);
    add("embeddings.token_type_embeddings.weight".into(), vec![2, 8], 0.0, &mut rng);
    let mut norms = vec!["embeddings.LayerNorm".to_string()];
    for l in 0..2 {
        let p = format!("encoder.layer.{l}");
        norms.push(format!("{p}.attention.output.LayerNorm"));
        norms.push(format!("{p}.output.LayerNorm"));
        for (name, out, inp) in [
            ("attention.self.query", 8, 8),
            ("attention.self.key", 8, 8),
            ("attention.self.value", 8, 8),
            ("attention.output.dense", 8, 8),
            ("intermediate.dense", 16, 8),
            ("output.dense", 8, 16),
        ] {
            add(format!("{p}.{name}.weight"), vec![out, inp], 0.0, &mut rng);
            add(format!("{p}.{name}.bias"), vec![out], 0.0, &mut rng);
        }
    }
    for ln in norms {
        add(format!("{ln}.weight"), vec![8], 1.0, &mut rng);
        add(format!("{ln}.bias"), vec![8], 0.0, &mut rng);
    }
    add("pooler.dense.weight".into(), vec![8, 8], 0.0, &mut rng);
    add("pooler.dense.bias".into(), vec![8], 0.0, &mut rng);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, dims, bytes)| (k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, dims.clone(), bytes).unwrap()))
        .collect();
    std::fs::write(dir.path().join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    dir
}

fn load(dir: &Path, labels: usize) -> BertForSequenceClassification {
    BertForSequenceClassification::load(dir, labels, &Cpu::default(), &mut StdRng::seed_from_u64(7)).unwrap()
}

/// Rows of different lengths (padding is masked) and a pair (token types 1).
fn rows() -> Vec<(Vec<u32>, Vec<u32>)> {
    vec![
        (vec![2, 5, 7, 3], vec![0, 0, 0, 0]),
        (vec![2, 10, 5, 9, 7, 11, 3], vec![0; 7]),
        (vec![2, 6, 3, 8, 7, 3], vec![0, 0, 0, 1, 1, 1]),
        (vec![2, 3], vec![0, 0]),
    ]
}

fn batch() -> (BertInput, Vec<usize>) {
    (BertInput::new(&rows(), 0), vec![1, 0, 1, 0])
}

#[test]
fn teacher_gradients_match_finite_differences() {
    let dir = tiny_random_dir(3);
    let mut model = load(dir.path(), 2);
    let (input, labels) = batch();
    let mut target = vec![0f32; labels.len() * 2];
    for (r, &l) in labels.iter().enumerate() {
        target[r * 2 + l] = 1.0;
    }
    let target = Cpu::default().tensor_from_vec(target, (labels.len(), 2));
    let mut grads = cross_entropy_with_logits_loss(model.forward_train(&input, &DropoutRng::new(0)), target).backward();
    let analytic: Vec<(String, Vec<f32>)> =
        model.params_mut().into_iter().map(|(name, p)| (name, p.grad(&mut grads).to_vec())).collect();
    let loss = |m: &BertForSequenceClassification| mean_cross_entropy(&m.predict_logits(&input), &labels, 2);

    let eps = 1e-2f32;
    let (mut checked, mut nonzero) = (0, 0);
    for (k, (name, grad)) in analytic.iter().enumerate() {
        let n = grad.len();
        for idx in (0..n).step_by(1 + n / 12) {
            let nudge = |delta: f32, model: &mut BertForSequenceClassification| {
                let mut params = model.params_mut();
                let mut v = params[k].1.values();
                v[idx] += delta;
                params[k].1.set_values(&v);
            };
            nudge(eps, &mut model);
            let plus = loss(&model);
            nudge(-2.0 * eps, &mut model);
            let minus = loss(&model);
            nudge(eps, &mut model);
            let numeric = (plus - minus) / (2.0 * eps as f64);
            let a = grad[idx] as f64;
            assert!(
                (numeric - a).abs() <= 2e-3 + 3e-2 * a.abs().max(numeric.abs()),
                "{name}[{idx}]: analytic {a:.6}, numeric {numeric:.6}"
            );
            checked += 1;
            nonzero += (a.abs() > 1e-4) as usize;
        }
    }
    assert!(checked > 300, "checked only {checked} entries");
    assert!(nonzero > checked / 3, "too few non-zero gradients ({nonzero} of {checked}) to mean anything");
}

#[test]
fn padding_and_batching_do_not_change_logits() {
    let dir = tiny_random_dir(4);
    let model = load(dir.path(), 3);
    let (input, _) = batch();
    let all = model.predict_logits(&input);
    // The tape-free inference path computes what the training graph computes.
    let graph = model.forward(model.bert.embeddings.word_embeddings.clone(), &input, Dropout::NONE).as_vec();
    assert!(all.iter().zip(&graph).all(|(a, b)| (a - b).abs() < 1e-5), "{all:?} vs {graph:?}");
    for (r, row) in rows().iter().enumerate() {
        let alone = model.predict_logits(&BertInput::new(std::slice::from_ref(row), 0));
        for c in 0..3 {
            assert!((alone[c] - all[r * 3 + c]).abs() < 1e-5, "row {r}: {alone:?} vs {:?}", &all[r * 3..r * 3 + 3]);
        }
    }
}

#[test]
fn saved_teacher_is_an_hf_dir_that_loads_back_identically() {
    let src = tiny_random_dir(5);
    let mut model = load(src.path(), 2);
    let out = tempfile::tempdir().unwrap();
    let saved = out.path().join("teacher");
    model.save(&saved, &["negative".into(), "positive".into()]).unwrap();
    // Saving again replaces the dir in place.
    model.save(&saved, &["negative".into(), "positive".into()]).unwrap();

    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(saved.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["id2label"]["1"], "positive");
    assert_eq!(config["label2id"]["negative"], 0);
    assert!(saved.join("vocab.txt").is_file(), "the tokenizer files travel with the model");
    let bytes = std::fs::read(saved.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names: Vec<String> = file.names().into_iter().map(String::from).collect();
    assert!(names.contains(&"classifier.weight".to_string()) && names.contains(&"bert.pooler.dense.weight".to_string()));
    assert!(names.contains(&"bert.encoder.layer.1.attention.self.query.weight".to_string()));

    let reloaded = load(&saved, 2);
    let (input, _) = batch();
    assert_eq!(model.predict_logits(&input), reloaded.predict_logits(&input));

    let e = format!("{:#}", BertForSequenceClassification::load(&saved, 3, &Cpu::default(), &mut StdRng::seed_from_u64(0)).unwrap_err());
    assert!(e.contains("classifier.weight") && e.contains("3 labels"), "{e}");
    let leftovers: Vec<_> = std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary dirs left behind: {leftovers:?}");
}

#[test]
fn tokenizer_builds_cls_sep_pairs_and_truncates() {
    let dir = tiny_random_dir(6);
    let tok = distill::tokenize::BertTokenizer::load(dir.path(), 6).unwrap();
    let (ids, types) = tok.encode("a good film", None).unwrap();
    assert_eq!(ids, vec![2, 8, 5, 7, 3]);
    assert_eq!(types, vec![0; 5]);
    let (ids, types) = tok.encode("very good film", Some("not bad")).unwrap();
    assert_eq!(ids.len(), 6, "cut to max_len: {ids:?}");
    assert_eq!((ids[0], *ids.last().unwrap()), (2, 3));
    assert_eq!(types.iter().filter(|&&t| t == 1).count(), types.len() - types.iter().position(|&t| t == 1).unwrap());
    // A BERT vocab keeps the augmenter's mask word as it is; unknown specials stay unchanged.
    assert_eq!(tok.special_spelling("[MASK]"), "[MASK]");
    assert_eq!(tok.special_spelling("<x>"), "<x>");
    std::fs::remove_file(dir.path().join("vocab.txt")).unwrap();
    let e = format!("{:#}", distill::tokenize::BertTokenizer::load(dir.path(), 6).err().unwrap());
    assert!(e.contains("neither tokenizer.json nor vocab.txt"), "{e}");
}

#[test]
fn bucketed_batches_cover_every_example_once_with_similar_lengths() {
    let mut rng = StdRng::seed_from_u64(1);
    let lengths: Vec<usize> = (0..5000).map(|_| rng.gen_range(3..60)).collect();
    let batches = bucketed_batches(&lengths, 32, &mut rng);
    let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
    seen.sort();
    assert_eq!(seen, (0..5000).collect::<Vec<_>>());
    // Padding waste: tokens padded per batch vs. the same batches drawn at random.
    let waste = |batches: &[Vec<usize>]| -> usize {
        batches.iter().map(|b| b.iter().map(|&i| b.iter().map(|&j| lengths[j]).max().unwrap() - lengths[i]).sum::<usize>()).sum()
    };
    let random = shuffled_batches(5000, 32, &mut rng);
    assert!(waste(&batches) * 10 < waste(&random), "bucketed {} vs random {}", waste(&batches), waste(&random));
}

#[test]
fn warmup_then_linear_decay() {
    assert_eq!(warmup_linear_lr(1.0, 1, 10, 100), 0.1);
    assert_eq!(warmup_linear_lr(1.0, 10, 10, 100), 1.0);
    assert!((warmup_linear_lr(1.0, 55, 10, 100) - 0.5).abs() < 1e-12);
    assert_eq!(warmup_linear_lr(1.0, 100, 10, 100), 0.0);
    assert_eq!(warmup_linear_lr(2.0, 1, 0, 4), 1.5);
}

/// A few fine-tuning steps of the real MiniLM teacher on a real SST-2 slice, through the CLI's
/// code path: results row, metrics rows, and a saved dir that loads back.
#[test]
fn teacher_stage_runs_on_an_sst2_slice() {
    let model_dir = distill::config::distill_home().join("models/all-MiniLM-L6-v2");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/SST-2");
    if !model_dir.join("model.safetensors").is_file() {
        eprintln!("skipped: {} is missing; run scripts/setup", model_dir.display());
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"name = "teacher-slice"
task = "sst2"
stages = ["teacher"]
out_dir = "{out}"
[data]
dir = "{data}"
train_limit = 192
dev_limit = 64
[vocab]
kind = "wordpiece"
tokenizer = "{model}"
[teacher]
model = "{model}"
batch_size = 32
lr = 5e-5
epochs = 1
eval_every = 3
"#,
        out = out.path().display(),
        data = data.display(),
        model = model_dir.display()
    );
    let exp = distill::config::Experiment::parse(&toml, "slice.toml", &[]).unwrap();
    let teacher_dir = distill::train::teacher::teacher_dir(&exp);
    let rows = distill::train::run_experiment(exp.clone()).unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.stage, "teacher");
    assert!(row.params > 22_000_000 && row.params < 23_000_000, "{}", row.params);
    assert!((0.0..=1.0).contains(&row.dev_accuracy) && row.train_sentences_per_s > 0.0);
    let run_dir = Path::new(&row.run_dir);
    let metrics = std::fs::read_to_string(run_dir.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.starts_with("teacher,")).count(), 4, "{metrics}");
    let teacher = load(&teacher_dir, 2);
    let task = Task::new(distill::config::TaskName::Sst2, None);
    assert_eq!(teacher.num_labels(), task.num_labels());
    let results = std::fs::read_to_string(out.path().join("results.csv")).unwrap();
    assert!(results.lines().nth(1).unwrap().contains("teacher"), "{results}");

    // A second experiment that differs only outside [teacher] reuses the finished teacher:
    // no training (the saved weights are untouched) and the same figures.
    let modified = std::fs::metadata(teacher_dir.join("model.safetensors")).unwrap().modified().unwrap();
    let mut other = exp.clone();
    other.name = "teacher-slice-again".into();
    let again = distill::train::run_experiment(other).unwrap();
    assert_eq!(again[0].dev_accuracy, row.dev_accuracy);
    assert_eq!(again[0].experiment, "teacher-slice-again");
    assert_eq!(std::fs::metadata(teacher_dir.join("model.safetensors")).unwrap().modified().unwrap(), modified);
    // A different [teacher] setting gets its own dir.
    let mut changed = exp;
    changed.teacher.as_mut().unwrap().lr = 4e-5;
    assert_ne!(distill::train::teacher::teacher_dir(&changed), teacher_dir);
}

/// A tiny teacher saved with labels (as the teacher stage leaves it), so `predict` reads it.
fn tiny_teacher_dir(seed: u64) -> tempfile::TempDir {
    let src = tiny_random_dir(seed);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("teacher");
    load(src.path(), 2).save(&dir, &["negative".into(), "positive".into()]).unwrap();
    out
}

fn predict_logits(dir: &Path, precision: &str, portable: bool) -> (Vec<f32>, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_distill"));
    command.args(["predict", &dir.display().to_string(), "--logits", "--precision", precision]);
    if portable {
        command.env("DISTILL_SIMD", "portable");
    }
    let mut child = command.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"a very good film .\nnot good\nbad bad film\ngood\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("label,logit_negative,logit_positive,text"), "{text}");
    let logits = text.lines().skip(1).flat_map(|l| l.split(',').skip(1).take(2).map(|v| v.parse::<f32>().unwrap()).collect::<Vec<_>>()).collect();
    (logits, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn predict_lines(dir: &Path, lines: &str) -> std::process::Output {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["predict", &dir.display().to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// A teacher dir distill fine-tuned names its task, so `predict` reads its lines as that task
/// does: a tab in a single-sentence teacher's line is an error naming the line (a TSV row's
/// label would otherwise be read as a second text), and a pair teacher needs the tab. A dir
/// with no result file (any HF model) reads a pair wherever a line has a tab.
#[test]
fn predict_reads_lines_as_the_teachers_task_does() {
    let out = tiny_teacher_dir(9);
    let dir = out.path().join("teacher");
    assert!(predict_lines(&dir, "good film\tgreat film\n").status.success());
    let result = |task: &str| {
        format!(
            r#"{{"experiment":"t","task":"{task}","stage":"teacher","params":1,"dev_accuracy":0.5,"dev_precision":0.5,"dev_recall":0.5,"dev_f1":0.5,"best_epoch":1,"train_time_s":1.0,"train_sentences_per_s":1.0,"eval_sentences_per_s":1.0,"config_hash":"x","git_commit":"x","run_dir":"x","finished_at_unix":1}}"#
        )
    };
    std::fs::write(dir.join("distill_result.json"), result("sst2")).unwrap();
    let single = predict_lines(&dir, "good film\na good film .\t1\n");
    let stderr = String::from_utf8_lossy(&single.stderr);
    assert!(!single.status.success() && stderr.contains("stdin:2:") && stderr.contains("single-sentence model"), "{stderr}");
    assert!(predict_lines(&dir, "good film\n").status.success());
    std::fs::write(dir.join("distill_result.json"), result("mrpc")).unwrap();
    let pair = predict_lines(&dir, "good film\n");
    assert!(!pair.status.success() && String::from_utf8_lossy(&pair.stderr).contains("sentence-pair model"));
    assert!(predict_lines(&dir, "good film\tgreat film\n").status.success());
}

/// `DISTILL_SIMD=portable` forces the portable kernels (as on a CPU without AVX-512, VNNI or
/// BF16): `distill predict` gives the same logits as the dispatched path in every precision,
/// and says so in one line where reduced precision loses its instructions.
#[test]
fn portable_fallback_matches_the_dispatched_path() {
    let out = tiny_teacher_dir(8);
    let dir = out.path().join("teacher");
    let (f32_logits, _) = predict_logits(&dir, "f32", false);
    for precision in ["f32", "bf16", "int8"] {
        let (fast, _) = predict_logits(&dir, precision, false);
        let (portable, note) = predict_logits(&dir, precision, true);
        let worst = fast.iter().zip(&portable).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "{precision}: dispatched {fast:?} vs portable {portable:?}");
        assert_eq!(precision != "f32", note.contains("portable path"), "{precision}: {note}");
        let from_f32 = fast.iter().zip(&f32_logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(from_f32 < 0.1, "{precision}: {fast:?} vs f32 {f32_logits:?}");
    }
}

/// The transfer set's logits are cached per precision: f32 twice is one pass, int8 is another
/// pass into another file.
#[test]
fn teacher_logits_are_cached_per_precision() {
    use distill::config::{DeviceName, Precision};
    use distill::inference::{cached_teacher_logits, TEACHER_INFERENCE_ROWS};
    use std::sync::atomic::Ordering;
    let out = tiny_teacher_dir(9);
    let dir = out.path().join("teacher");
    let cache = out.path().join("cache");
    let texts: Vec<(String, Option<String>)> = ["a good film", "not very good", "bad"].iter().map(|t| (t.to_string(), None)).collect();
    let run = |precision| cached_teacher_logits(&dir, 16, &texts, 2, 2, &cache, DeviceName::Cpu, precision).unwrap();
    let rows_before = TEACHER_INFERENCE_ROWS.load(Ordering::SeqCst);
    let first = run(Precision::F32);
    let again = run(Precision::F32);
    assert_eq!(first.logits, again.logits);
    assert_eq!(TEACHER_INFERENCE_ROWS.load(Ordering::SeqCst) - rows_before, 3, "the second f32 call should read the cache");
    assert!(again.rows_per_s.is_some(), "the cache file keeps the pass's rows/s");
    let int8 = run(Precision::Int8);
    assert_eq!(TEACHER_INFERENCE_ROWS.load(Ordering::SeqCst) - rows_before, 6, "int8 is a pass of its own");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2);
    assert_ne!(first.logits, int8.logits);
}
