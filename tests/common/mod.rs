//! Shared by the test binaries: the real pretrained assets, small experiments, sweep folders.
#![allow(dead_code)] // each test binary uses some of these

use std::path::{Path, PathBuf};

/// The all-MiniLM-L6-v2 dir from `scripts/setup`, or `None` (with a "skipped" line) without it.
pub fn minilm() -> Option<PathBuf> {
    let dir = distill::config::distill_home().join("models/all-MiniLM-L6-v2");
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        eprintln!("skipped: {} is missing; run scripts/setup", dir.display());
        None
    }
}

/// A small random BERT with MiniLM's tokenizer and vocab (2 layers, hidden 32, 2 heads), in a
/// temporary dir kept alive by the returned guard: a teacher that fine-tunes in a fraction of a
/// second, for tests of what a run does around the model (resume, caches, stage reuse). `None`
/// (skipped) without MiniLM. The real MiniLM is tested in `bert_parity.rs` and `teacher.rs`.
pub fn tiny_teacher() -> Option<(tempfile::TempDir, PathBuf)> {
    let minilm = minilm()?;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("tiny-bert");
    let config = serde_json::json!({
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": 30522, "hidden_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1
    });
    distill::models::bert::BertModel::write_random(&dir, &config, 7).unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"] {
        std::fs::copy(minilm.join(file), dir.join(file)).unwrap();
    }
    Some((parent, dir))
}

/// A small real experiment with all three stages on an SST-2 slice, several evaluations per
/// stage and a teacher pass of two segments (for the resume tests).
pub fn small_experiment(model: &Path, out: &Path) -> String {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/SST-2");
    format!(
        r#"name = "resume"
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
epochs = 2
eval_every = 2
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
epochs = 2
eval_every = 2
[distill]
alpha = 0.5
optimizer = "adadelta"
lr = 1.0
batch_size = 16
epochs = 2
eval_every = 3
dropout = 0.1
teacher_batch_size = 1
"#,
        out = out.display(),
        data = data.display(),
        model = model.display()
    )
}

/// The one sweep folder under `OUT_DIR/sweeps/`.
pub fn sweep_dir(out_dir: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(out_dir.join("sweeps")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}
