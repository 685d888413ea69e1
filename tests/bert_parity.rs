//! The dfdx BERT against Hugging Face transformers on the same weights, and clear errors for
//! malformed model dirs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dfdx::prelude::*;
use distill::models::bert::{BertInput, BertModel};

fn minilm_dir() -> PathBuf {
    distill::config::distill_home().join("models/all-MiniLM-L6-v2")
}

#[derive(serde::Deserialize)]
struct Fixture {
    rows: Vec<Row>,
}

#[derive(serde::Deserialize)]
struct Row {
    input_ids: Vec<u32>,
    token_type_ids: Vec<u32>,
    last_hidden_state: Vec<Vec<f32>>,
}

#[test]
fn last_hidden_state_matches_transformers() {
    let dir = minilm_dir();
    if !dir.join("model.safetensors").is_file() {
        eprintln!("skipped: {} is missing; run scripts/setup", dir.display());
        return;
    }
    let fixture: Fixture = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_parity.json")).unwrap(),
    )
    .unwrap();
    let model = BertModel::load(&dir, &Cpu::default()).unwrap();
    let hidden = model.config.hidden_size;
    let rows: Vec<(Vec<u32>, Vec<u32>)> =
        fixture.rows.iter().map(|r| (r.input_ids.clone(), r.token_type_ids.clone())).collect();
    // Each row alone and all rows in one padded batch must both match.
    let mut worst = 0f32;
    for (b, row) in fixture.rows.iter().enumerate() {
        let alone = model.last_hidden_state(&BertInput::new(&rows[b..b + 1], 0));
        let batch_input = BertInput::new(&rows, 0);
        let batched = model.last_hidden_state(&batch_input);
        for (t, want) in row.last_hidden_state.iter().enumerate() {
            for j in 0..hidden {
                worst = worst.max((alone[t * hidden + j] - want[j]).abs());
                worst = worst.max((batched[(b * batch_input.seq + t) * hidden + j] - want[j]).abs());
            }
        }
    }
    assert!(worst <= 1e-4, "max abs difference {worst}");
}

/// Writes a tiny random BERT model dir with the given tensors changed.
fn tiny_dir(edit: impl Fn(&mut HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"{"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 16, "max_position_embeddings": 12, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "hidden_act": "gelu"}"#;
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let f32s = |dims: Vec<usize>| {
        let n: usize = dims.iter().product();
        let bytes = (0..n).flat_map(|i| ((i % 7) as f32 * 0.1 - 0.3).to_le_bytes()).collect();
        (safetensors::Dtype::F32, dims, bytes)
    };
    let mut t: HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> = HashMap::new();
    t.insert("embeddings.word_embeddings.weight".into(), f32s(vec![10, 8]));
    t.insert("embeddings.position_embeddings.weight".into(), f32s(vec![12, 8]));
    t.insert("embeddings.token_type_embeddings.weight".into(), f32s(vec![2, 8]));
    for ln in ["embeddings.LayerNorm", "encoder.layer.0.attention.output.LayerNorm", "encoder.layer.0.output.LayerNorm"] {
        t.insert(format!("{ln}.weight"), f32s(vec![8]));
        t.insert(format!("{ln}.bias"), f32s(vec![8]));
    }
    for (name, out, inp) in [
        ("encoder.layer.0.attention.self.query", 8, 8),
        ("encoder.layer.0.attention.self.key", 8, 8),
        ("encoder.layer.0.attention.self.value", 8, 8),
        ("encoder.layer.0.attention.output.dense", 8, 8),
        ("encoder.layer.0.intermediate.dense", 16, 8),
        ("encoder.layer.0.output.dense", 8, 16),
        ("pooler.dense", 8, 8),
    ] {
        t.insert(format!("{name}.weight"), f32s(vec![out, inp]));
        t.insert(format!("{name}.bias"), f32s(vec![out]));
    }
    edit(&mut t);
    let views: Vec<(String, safetensors::tensor::TensorView)> = t
        .iter()
        .map(|(k, (dtype, dims, bytes))| (k.clone(), safetensors::tensor::TensorView::new(*dtype, dims.clone(), bytes).unwrap()))
        .collect();
    std::fs::write(dir.path().join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    dir
}

fn load_error(edit: impl Fn(&mut HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>)) -> String {
    let dir = tiny_dir(edit);
    format!("{:#}", BertModel::load(dir.path(), &Cpu::default()).expect_err("loading must fail"))
}

#[test]
fn a_well_formed_tiny_dir_loads_and_runs() {
    let dir = tiny_dir(|_| {});
    let model = BertModel::load(dir.path(), &Cpu::default()).unwrap();
    let out = model.last_hidden_state(&BertInput::new(&[(vec![2, 3, 4], vec![0, 0, 1])], 0));
    assert_eq!(out.len(), 3 * 8);
    assert!(out.iter().all(|v| v.is_finite()));
}

#[test]
fn malformed_model_dirs_name_file_and_tensor() {
    let e = load_error(|t| {
        t.remove("encoder.layer.0.attention.self.key.weight");
    });
    assert!(e.contains("model.safetensors") && e.contains("missing tensor encoder.layer.0.attention.self.key.weight"), "{e}");
    let e = load_error(|t| {
        t.get_mut("encoder.layer.0.intermediate.dense.weight").unwrap().1 = vec![8, 16];
    });
    assert!(e.contains("encoder.layer.0.intermediate.dense.weight has shape [8, 16]") && e.contains("[16, 8]"), "{e}");
    let e = load_error(|t| {
        let entry = t.get_mut("embeddings.word_embeddings.weight").unwrap();
        entry.0 = safetensors::Dtype::F16;
        entry.2.truncate(entry.2.len() / 2);
    });
    assert!(e.contains("embeddings.word_embeddings.weight is F16") && e.contains("only F32"), "{e}");
    let dir = tiny_dir(|_| {});
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let e = format!("{:#}", BertModel::load(dir.path(), &Cpu::default()).err().unwrap());
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn parameter_names_are_the_checkpoint_names() {
    let dir = tiny_dir(|_| {});
    let mut model = BertModel::load(dir.path(), &Cpu::default()).unwrap();
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut in_file: Vec<String> = file.names().into_iter().map(String::from).collect();
    in_file.sort();
    let mut params = Vec::new();
    model.params_mut("", &mut params);
    let mut names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(names, in_file);
    for (name, p) in &params {
        let view = file.tensor(name).unwrap();
        let want: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(p.values(), want, "{name}");
    }
}

/// BF16 and INT8 inference stay close to FP32 on the real weights and real sentences: every
/// token's last hidden state points the same way (cosine similarity), yet differs (the reduced
/// precision really ran).
#[test]
fn reduced_precision_hidden_states_stay_close_to_f32() {
    use distill::models::bert_inference::BertInference;
    use distill::ops::packed::Precision;
    let dir = minilm_dir();
    if !dir.join("model.safetensors").is_file() {
        eprintln!("skipped: {} is missing; run scripts/setup", dir.display());
        return;
    }
    let model = BertModel::load(&dir, &Cpu::default()).unwrap();
    let tokenizer = distill::tokenize::BertTokenizer::load(&dir, 64).unwrap();
    let dev = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/SST-2/dev.tsv")).unwrap();
    let texts: Vec<(&str, Option<&str>)> = dev.lines().skip(1).take(48).map(|l| (l.split('\t').next().unwrap(), None)).collect();
    let input = BertInput::new(&tokenizer.encode_all(&texts).unwrap(), tokenizer.pad_id);
    let hidden = model.config.hidden_size;
    let reference = BertInference::encoder(&model, Precision::F32).last_hidden_state(&input);
    for (precision, min_cosine) in [(Precision::Bf16, 0.995), (Precision::Int8, 0.98)] {
        let got = BertInference::encoder(&model, precision).last_hidden_state(&input);
        let (mut worst, mut max_diff) = (1f64, 0f32);
        for (b, &len) in input.lengths.iter().enumerate() {
            for t in 0..len {
                let at = (b * input.seq + t) * hidden;
                let (x, y) = (&reference[at..at + hidden], &got[at..at + hidden]);
                let dot: f64 = x.iter().zip(y).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
                let norm = |v: &[f32]| v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
                worst = worst.min(dot / (norm(x) * norm(y)));
                max_diff = x.iter().zip(y).map(|(a, b)| (a - b).abs()).fold(max_diff, f32::max);
            }
        }
        assert!(worst >= min_cosine, "{precision:?}: lowest cosine similarity to f32 {worst:.5}");
        assert!(max_diff > 1e-4, "{precision:?}: identical to f32 ({max_diff}); did it run in reduced precision?");
    }
}
