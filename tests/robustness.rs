//! Nothing silently wrong, nothing lost: non-finite numbers are refused where they enter,
//! results rows are written exactly once, bad settings are caught before anything trains.

use std::path::Path;

use distill::config::{Experiment, VectorFormat};
use distill::embeddings::load_pretrained;
use distill::report::{append_result, read_results, ResultRow};

fn vocab() -> Vec<String> {
    ["[PAD]", "[UNK]", "good", "bad"].iter().map(|s| s.to_string()).collect()
}

#[test]
fn non_finite_vectors_are_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["nan", "inf", "-inf", "1e39"] {
        let path = dir.path().join("vectors.txt");
        std::fs::write(&path, format!("good 0.1 0.2\nbad 0.3 {bad}\n")).unwrap();
        let e = load_pretrained(&path, VectorFormat::Glove, &vocab()).err().expect("refused").to_string();
        assert!(e.contains("vectors.txt:2") && e.contains("not a finite"), "{bad}: {e}");
    }
    // word2vec binary: the same check on the raw floats.
    let path = dir.path().join("vectors.bin");
    let mut bytes = b"2 2\n".to_vec();
    for (word, values) in [("good", [0.1f32, 0.2]), ("bad", [f32::NAN, 0.5])] {
        bytes.extend(format!("{word} ").as_bytes());
        values.iter().for_each(|v| bytes.extend(v.to_le_bytes()));
        bytes.push(b'\n');
    }
    std::fs::write(&path, bytes).unwrap();
    let e = load_pretrained(&path, VectorFormat::Word2vecBinary, &vocab()).err().expect("refused").to_string();
    assert!(e.contains("vector 2 of 2") && e.contains("\"bad\""), "{e}");
    // A corrupt header asking for 10^11 dimensions is an error, not a 400 GB allocation
    // (found by tests/fuzz.rs).
    std::fs::write(&path, b"1 99999999999\ngood \x00\x00").unwrap();
    let e = load_pretrained(&path, VectorFormat::Word2vecBinary, &vocab()).err().expect("refused").to_string();
    assert!(e.contains("99999999999 dimensions"), "{e}");
}

#[test]
fn a_nan_weight_is_copied_not_taken_for_a_layout_error_and_never_saved() {
    use dfdx::prelude::*;
    let dev = Cpu::default();
    let t: Tensor<(usize, usize), f32, Cpu> = dev.tensor_from_vec(vec![1.0, f32::NAN, 3.0, 4.0], (2, 2));
    let values = distill::models::layers::contiguous_values(&t);
    assert!(values[1].is_nan() && values[3] == 4.0);

    let shape = distill::models::bilstm::StudentShape { vocab_size: 5, embedding_dim: 2, hidden_size: 2, fc_size: 2, num_labels: 2, pair_features: None };
    let mut model = distill::models::bilstm::BiLstmStudent::new(shape, 0.0, &dev, &mut rand::SeedableRng::seed_from_u64(0));
    model.embedder.weight[3] = f32::INFINITY;
    let dir = tempfile::tempdir().unwrap();
    let e = model.save(&dir.path().join("model.safetensors")).unwrap_err().to_string();
    assert!(e.contains("embedder.weight") && e.contains("not finite"), "{e}");
    assert!(!dir.path().join("model.safetensors").exists());
}

fn row(stage: &str, finished: u64) -> ResultRow {
    ResultRow {
        experiment: "e".into(),
        task: "sst2".into(),
        stage: stage.into(),
        params: 1,
        dev_accuracy: 0.5,
        dev_precision: 0.5,
        dev_recall: 0.5,
        dev_f1: 0.5,
        best_epoch: 1,
        train_time_s: 1.0,
        train_sentences_per_s: 1.0,
        eval_sentences_per_s: 1.0,
        config_hash: "h".into(),
        git_commit: "c".into(),
        run_dir: "runs/e-h".into(),
        finished_at_unix: finished,
    }
}

#[test]
fn results_rows_are_appended_exactly_once_and_never_glued_or_under_a_foreign_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.csv");
    append_result(&path, &row("student", 1)).unwrap();
    append_result(&path, &row("student", 1)).unwrap(); // a rerun repairing a kill: no second row
    append_result(&path, &row("distill", 2)).unwrap();
    assert_eq!(read_results(&path).unwrap().len(), 2);

    // A torn last line (a writer killed mid-row) is dropped, not glued to the next row.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend(b"e,sst2,dis");
    std::fs::write(&path, &bytes).unwrap();
    append_result(&path, &row("teacher", 3)).unwrap();
    let stages: Vec<String> = read_results(&path).unwrap().into_iter().map(|r| r.stage).collect();
    assert_eq!(stages, ["student", "distill", "teacher"]);

    // Another tool's file is not appended to.
    let foreign = dir.path().join("other.csv");
    std::fs::write(&foreign, "name,score\nx,1\n").unwrap();
    let e = append_result(&foreign, &row("student", 4)).unwrap_err().to_string();
    assert!(e.contains("other.csv") && e.contains("header"), "{e}");
    assert_eq!(std::fs::read_to_string(&foreign).unwrap(), "name,score\nx,1\n");
}

#[test]
fn stale_temporaries_of_ended_processes_are_removed_and_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join(".results.csv.tmp-999999999");
    let live = dir.path().join(format!(".results.csv.tmp-{}", std::process::id()));
    std::fs::write(&dead, "x").unwrap();
    std::fs::write(&live, "x").unwrap();
    distill::files::remove_stale_temporaries(dir.path());
    assert!(!dead.exists() && live.exists());
}

#[test]
fn a_second_holder_of_a_lock_waits_for_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".lock");
    let first = distill::files::lock(&path, "test").unwrap();
    let waiter = {
        let path = path.clone();
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let _second = distill::files::lock(&path, "test").unwrap();
            start.elapsed()
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(first);
    assert!(waiter.join().unwrap() >= std::time::Duration::from_millis(250));
}

#[test]
fn a_truncated_or_damaged_teacher_is_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    distill::backend::parity::write_random_minilm(dir.path()).unwrap();
    let weights = dir.path().join("model.safetensors");
    assert!(distill::files::safetensors_intact(&weights));
    std::fs::write(dir.path().join("distill_result.json"), serde_json::to_string(&row("teacher", 1)).unwrap()).unwrap();
    assert!(distill::train::teacher::finished_teacher(dir.path()).unwrap().is_some());
    let bytes = std::fs::read(&weights).unwrap();
    // One byte changed, the length kept: only the hash recorded at save shows it.
    let mut damaged = bytes.clone();
    let last = damaged.len() - 3;
    damaged[last] ^= 0x10;
    std::fs::write(&weights, &damaged).unwrap();
    assert!(!distill::files::safetensors_intact(&weights));
    assert!(distill::train::teacher::finished_teacher(dir.path()).unwrap().is_none(), "a damaged teacher trains again");
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    assert!(!distill::files::safetensors_intact(&weights));
    assert!(distill::train::teacher::finished_teacher(dir.path()).unwrap().is_none(), "a truncated teacher trains again");
}

fn load(sets: &[&str]) -> Result<Experiment, String> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let exp = Experiment::load(Path::new("experiments/sst2.toml"), &sets).map_err(|e| e.to_string())?;
    exp.check_inputs().map_err(|(key, message)| format!("key `{key}`: {message}"))?;
    Ok(exp)
}

#[test]
fn bad_settings_are_caught_before_anything_trains() {
    let home = distill::config::distill_home();
    if !home.join("lexicons/en-lexicon.txt").is_file() || !home.join("models/all-MiniLM-L6-v2/config.json").is_file() {
        eprintln!("skipped: run scripts/setup for the default assets");
        return;
    }
    assert!(load(&[]).is_ok(), "{:?}", load(&[]).err());
    let cases: &[(&[&str], &str, &str)] = &[
        (&["augment.pos_lexicon=\"/nowhere/lexicon.txt\""], "augment.pos_lexicon", "no such POS lexicon"),
        (&["embeddings={path=\"/nowhere/vectors.txt\",format=\"glove\"}"], "embeddings.path", "no such vectors file"),
        (&["augment.pos_lexicon=\"${DISTILL_TEST_UNSET_VARIABLE}/x\""], "augment.pos_lexicon", "is not set"),
        (&["teacher.max_seq_len=600"], "teacher.max_seq_len", "max_position_embeddings (512)"),
        (&["stages=[\"student\", \"student\"]"], "stages", "listed twice"),
        (&["student.lr=\"abc\""], "student.lr", "from --set student.lr"),
        (&["data.dir=\"/nowhere/SST-2\""], "data.dir", "/nowhere/SST-2: no such data folder"),
        (&["data.dev=\"validation.tsv\""], "data.dev", "validation.tsv: no such data file"),
    ];
    for (sets, key, says) in cases {
        let e = load(sets).unwrap_err();
        assert!(e.contains(&format!("key `{key}`")) && e.contains(says), "{sets:?}: {e}");
    }
    // A missing lexicon does not matter when no stage reads it.
    assert!(load(&["augment.pos_lexicon=\"/nowhere/lexicon.txt\"", "stages=[\"student\"]"]).is_ok());
}

#[test]
fn custom_columns_must_name_distinct_labels_and_a_label_column_that_is_not_text() {
    let base = r#"name = "c"
task = "custom"
stages = ["student"]
[data]
dir = "."
[data.columns]
text_a = "sentence"
label = "LABEL"
labels = LABELS
[vocab]
kind = "jieba"
[student]
embedding_dim = 8
hidden_size = 8
dropout = 0.1
optimizer = "adam"
lr = 1e-3
batch_size = 8
epochs = 1
"#;
    let parse = |label: &str, labels: &str| Experiment::parse(&base.replace("LABELS", labels).replace("LABEL", label), "c.toml", &[]);
    assert!(parse("label", r#"["neg", "pos"]"#).is_ok());
    let e = parse("label", r#"["neg", "neg"]"#).unwrap_err().to_string();
    assert!(e.contains("data.columns.labels") && e.contains("once"), "{e}");
    let e = parse("sentence", r#"["neg", "pos"]"#).unwrap_err().to_string();
    assert!(e.contains("data.columns.label") && e.contains("text column"), "{e}");
}
