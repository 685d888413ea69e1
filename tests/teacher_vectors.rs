//! `[embeddings] source = "teacher"`: student vectors made by the teacher's encoder, checked
//! against a computation by hand through the training graph (dfdx), on a random BERT of
//! all-MiniLM-L6-v2's shape with a small vocab.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;

use dfdx::prelude::*;
use distill::config::{Pooling, Weighting};
use distill::embeddings::teacher::{entry_ids, teacher_vectors, VectorSettings, CACHE_HITS};
use distill::models::bert::{BertInput, BertModel, Dropout};
use distill::tokenize::BertTokenizer;

const VOCAB: &[&str] = &["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "good", "##ly", "喜", "欢", "a", "film"];
const HIDDEN: usize = 384;

/// A random MiniLM-shaped teacher dir with [`VOCAB`] as its vocab.txt.
fn teacher(dir: &Path) {
    distill::backend::parity::write_random_minilm(dir).unwrap();
    std::fs::write(dir.join("vocab.txt"), VOCAB.join("\n") + "\n").unwrap();
}

/// The pooled hidden state of `ids` after `layers` layers, through the training graph.
fn by_hand(bert: &BertModel, ids: &[u32], layers: usize, pooling: Pooling) -> Vec<f32> {
    let mut bert = bert.clone();
    bert.encoder_layers.truncate(layers);
    let input = BertInput::new(&[(ids.to_vec(), vec![0; ids.len()])], 0);
    let states = bert.forward(bert.embeddings.word_embeddings.clone(), &input, Dropout::NONE).as_vec();
    let positions: Vec<usize> = match pooling {
        Pooling::Cls => vec![0],
        Pooling::Mean => (1..ids.len() - 1).collect(),
    };
    (0..HIDDEN).map(|j| positions.iter().map(|&p| states[p * HIDDEN + j]).sum::<f32>() / positions.len() as f32).collect()
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn vectors_equal_the_hand_computation_and_a_jieba_word_becomes_its_pieces() {
    let dir = tempfile::tempdir().unwrap();
    teacher(dir.path());
    let bert = BertModel::load(dir.path(), &Cpu::default()).unwrap();
    // Student entries: teacher entries, a continuation piece, and a jieba word the teacher
    // does not hold whole (two characters, two pieces).
    let tokens: Vec<String> = ["[PAD]", "[UNK]", "the", "movie", "##ly", "喜欢", "film"].iter().map(|s| s.to_string()).collect();
    let tokenizer = BertTokenizer::load(dir.path(), 34).unwrap();
    let ids = entry_ids(&tokenizer, &tokens, 0).unwrap();
    assert_eq!(ids[0], Vec::<u32>::new(), "[PAD] is not encoded");
    assert_eq!(ids[4], vec![2, 8, 3], "##ly is fed as the teacher's own entry");
    assert_eq!(ids[5], vec![2, 9, 10, 3], "喜欢 becomes [CLS] 喜 欢 [SEP]");
    let counts = vec![0u64; tokens.len()];
    for (layers, pooling) in [(None, Pooling::Mean), (Some(2), Pooling::Mean), (Some(6), Pooling::Cls)] {
        let settings = VectorSettings { layer: layers, pooling, weighting: Weighting::None, dim: HIDDEN };
        let made = teacher_vectors(dir.path(), &tokens, 0, &counts, settings, None).unwrap();
        assert!(made.values[..HIDDEN].iter().all(|&v| v == 0.0), "[PAD] is zero");
        for (i, entry_ids) in ids.iter().enumerate().skip(1) {
            let expected = by_hand(&bert, entry_ids, layers.unwrap_or(6), pooling);
            let got = &made.values[i * HIDDEN..(i + 1) * HIDDEN];
            let difference = max_difference(got, &expected);
            assert!(difference < 1e-4, "{:?} ({layers:?}, {pooling:?}): differs by {difference}", tokens[i]);
        }
    }
    // A different layer gives different vectors (the setting is not ignored).
    let last = teacher_vectors(dir.path(), &tokens, 0, &counts, VectorSettings { layer: None, pooling: Pooling::Mean, weighting: Weighting::None, dim: HIDDEN }, None).unwrap();
    let second = teacher_vectors(dir.path(), &tokens, 0, &counts, VectorSettings { layer: Some(2), pooling: Pooling::Mean, weighting: Weighting::None, dim: HIDDEN }, None).unwrap();
    assert!(max_difference(&last.values, &second.values) > 1e-2);
    let too_deep = teacher_vectors(dir.path(), &tokens, 0, &counts, VectorSettings { layer: Some(7), pooling: Pooling::Mean, weighting: Weighting::None, dim: HIDDEN }, None);
    assert!(format!("{:#}", too_deep.err().unwrap()).contains("embeddings.layer = 7"));
}

#[test]
fn reduced_vectors_are_cached_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    teacher(dir.path());
    let cache = dir.path().join("cache");
    let tokens: Vec<String> = VOCAB.iter().map(|s| s.to_string()).collect();
    let counts: Vec<u64> = (0..tokens.len() as u64).collect();
    let settings = VectorSettings { layer: None, pooling: Pooling::Mean, weighting: Weighting::Sif, dim: 4 };
    let before = CACHE_HITS.load(Ordering::Relaxed);
    let first = teacher_vectors(dir.path(), &tokens, 0, &counts, settings, Some(&cache)).unwrap();
    assert!(!first.cached && first.explained > 0.0 && first.explained < 1.0, "PCA to 4 of 384 dims keeps part of the variance");
    assert_eq!(first.values.len(), tokens.len() * 4);
    let second = teacher_vectors(dir.path(), &tokens, 0, &counts, settings, Some(&cache)).unwrap();
    assert!(second.cached);
    assert_eq!(CACHE_HITS.load(Ordering::Relaxed) - before, 1, "the second call reads the cache");
    assert_eq!(first.values, second.values);
    // Other counts change SIF's weights, hence the key: no hit.
    let other = teacher_vectors(dir.path(), &tokens, 0, &vec![1; tokens.len()], settings, Some(&cache)).unwrap();
    assert!(!other.cached);
    let wide = teacher_vectors(dir.path(), &tokens, 0, &counts, VectorSettings { dim: 385, ..settings }, None);
    assert!(format!("{:#}", wide.err().unwrap()).contains("student.embedding_dim = 385"));
}

fn experiment(teacher_dir: &Path, out: &Path, extra_embeddings: &str) -> String {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/SST-2");
    let teacher = teacher_dir.display();
    format!(
        r#"name = "teacher-vectors"
task = "sst2"
stages = ["student"]
out_dir = "{out}"
[data]
dir = "{data}"
train_limit = 48
dev_limit = 16
[vocab]
kind = "wordpiece"
tokenizer = "{teacher}"
[embeddings]
source = "teacher"
{extra_embeddings}
[teacher]
model = "{teacher}"
max_seq_len = 32
batch_size = 16
lr = 5e-5
epochs = 1
[student]
embedding_dim = 384
hidden_size = 8
dropout = 0.1
max_seq_len = 16
optimizer = "adadelta"
lr = 1.0
batch_size = 16
epochs = 1
train_embeddings = false
"#,
        out = out.display(),
        data = data.display()
    )
}

#[test]
fn the_student_stage_starts_from_the_teachers_vectors_and_reuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let teacher_dir = dir.path().join("teacher");
    teacher(&teacher_dir);
    let out = dir.path().join("runs");
    let file = dir.path().join("exp.toml");
    std::fs::write(&file, experiment(&teacher_dir, &out, "")).unwrap();
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_distill")).arg("run").arg(&file).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(output.status.success(), "{stderr}");
        stderr
    };
    let first = run(&[]);
    assert!(first.contains("all 13 vocab entries from the teacher"), "{first}");
    assert!(!first.contains("; reused"), "{first}");

    // The frozen embedding in the saved student is what the teacher made.
    let run_dir = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).find(|p| p.join("student").is_dir()).unwrap();
    let bytes = std::fs::read(run_dir.join("student/model.safetensors")).unwrap();
    let saved = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let embedder: Vec<f32> = distill::models::layers::f32_values(saved.tensor("embedder.weight").unwrap().data());
    let bert = BertModel::load(&teacher_dir, &Cpu::default()).unwrap();
    for (i, token) in VOCAB.iter().enumerate().skip(1) {
        let expected = by_hand(&bert, &[2, i as u32, 3], 6, Pooling::Mean);
        let difference = max_difference(&embedder[i * HIDDEN..(i + 1) * HIDDEN], &expected);
        assert!(difference < 1e-4, "{token}: differs by {difference}");
    }

    // Another training seed: a new stage, the same vectors, read from the cache.
    let second = run(&["--set", "seed=2"]);
    assert!(second.contains("; reused"), "{second}");
    assert!(!second.contains("through the teacher"), "{second}");
}

#[test]
fn teacher_vector_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let teacher_dir = dir.path().join("teacher");
    std::fs::create_dir_all(&teacher_dir).unwrap();
    let validate = |extra: &str| {
        let file = dir.path().join("exp.toml");
        std::fs::write(&file, experiment(&teacher_dir, &dir.path().join("runs"), extra)).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_distill")).arg("validate").arg(&file).output().unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr))
    };
    let (ok, stderr) = validate("path = \"v.txt\"\nformat = \"glove\"");
    assert!(!ok && stderr.contains("embeddings.path") && stderr.contains("source = \"teacher\""), "{stderr}");
    let (ok, stderr) = validate("pooling = \"max\"");
    assert!(!ok && stderr.contains("pooling"), "{stderr}");
    let file = dir.path().join("glove.toml");
    let text = experiment(&teacher_dir, &dir.path().join("runs"), "").replace("source = \"teacher\"", "pooling = \"cls\"");
    std::fs::write(&file, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_distill")).arg("validate").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("embeddings.pooling") && stderr.contains("teacher-made vectors only"), "{stderr}");
}
