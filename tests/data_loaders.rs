//! Every loader on the real files in ../shared/data, and on malformed files written here.

use std::path::{Path, PathBuf};

use distill::config::{CustomColumns, TaskName};
use distill::data::{load_split, LoadOptions, Task};

fn shared(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data").join(rel)
}

fn all() -> LoadOptions {
    LoadOptions::default()
}

fn label_counts(task: TaskName, rel: &str) -> (usize, usize, usize) {
    let ds = load_split(&Task::new(task, None), &shared(rel), all()).unwrap();
    let pos = ds.examples.iter().filter(|e| e.label == 1).count();
    (ds.examples.len(), ds.examples.len() - pos, pos)
}

#[test]
fn sst2_real_files() {
    assert_eq!(label_counts(TaskName::Sst2, "SST-2/train.tsv"), (67349, 29780, 37569));
    assert_eq!(label_counts(TaskName::Sst2, "SST-2/dev.tsv"), (872, 428, 444));
    let dev = load_split(&Task::new(TaskName::Sst2, None), &shared("SST-2/dev.tsv"), all()).unwrap();
    // SST-2 sentences end with a space in the file; the loader trims it.
    assert_eq!(dev.examples[0].text_a, "it 's a charming and often affecting journey .");
    assert!(dev.examples.iter().all(|e| e.text_b.is_none()));
}

#[test]
fn chnsenticorp_real_files_with_and_without_qid() {
    assert_eq!(label_counts(TaskName::Chnsenticorp, "ChnSentiCorp/train.tsv"), (9600, 4801, 4799));
    assert_eq!(label_counts(TaskName::Chnsenticorp, "ChnSentiCorp/dev.tsv"), (1200, 607, 593));
    let dev = load_split(&Task::new(TaskName::Chnsenticorp, None), &shared("ChnSentiCorp/dev.tsv"), all()).unwrap();
    assert!(dev.examples[0].text_a.starts_with("這間酒店環境和服務態度亦算不錯"));
}

#[test]
fn mrpc_real_files_with_bom_and_quotes() {
    assert_eq!(label_counts(TaskName::Mrpc, "MRPC/train.tsv"), (3668, 1194, 2474));
    assert_eq!(label_counts(TaskName::Mrpc, "MRPC/dev.tsv"), (408, 129, 279));
    let dev = load_split(&Task::new(TaskName::Mrpc, None), &shared("MRPC/dev.tsv"), all()).unwrap();
    let first = &dev.examples[0];
    assert_eq!(first.label, 1);
    // A lone `"` is text, not CSV quoting.
    assert_eq!(first.text_b.as_deref(), Some("\"The foodservice pie business does not fit our long-term growth strategy."));
}

#[test]
fn limit_keeps_the_first_rows() {
    let opts = LoadOptions { limit: 100, ..all() };
    let ds = load_split(&Task::new(TaskName::Sst2, None), &shared("SST-2/train.tsv"), opts).unwrap();
    assert_eq!(ds.examples.len(), 100);
    assert_eq!(ds.examples[0].text_a, "hide new secretions from the parental units");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn qqp_from_a_small_file_with_crlf() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "train.tsv",
        b"id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\r\n\
          1\t11\t12\tHow do I learn Rust?\tWhat is the best way to learn Rust?\t1\r\n\
          2\t13\t14\tWhy is the sky blue?\tHow tall is Everest?\t0\r\n",
    );
    let ds = load_split(&Task::new(TaskName::Qqp, None), &path, all()).unwrap();
    assert_eq!(ds.examples.len(), 2);
    assert_eq!(ds.examples[0].text_b.as_deref(), Some("What is the best way to learn Rust?"));
    assert_eq!(ds.examples[1].text_a, "Why is the sky blue?");
    assert_eq!(ds.examples.iter().map(|e| e.label).collect::<Vec<_>>(), vec![1, 0]);
}

#[test]
fn custom_tsv_with_named_columns_and_string_labels() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "reviews.tsv", "\u{feff}stars\treview\tsentiment\n5\tgreat phone  \tpositive\n1\tbroke in a day\tnegative\n".as_bytes());
    let columns = CustomColumns {
        text_a: "review".into(),
        text_b: None,
        label: "sentiment".into(),
        labels: vec!["negative".into(), "positive".into()],
    };
    let task = Task::new(TaskName::Custom, Some(&columns));
    let ds = load_split(&task, &path, all()).unwrap();
    assert_eq!(ds.examples[0].text_a, "great phone");
    assert_eq!(ds.examples.iter().map(|e| e.label).collect::<Vec<_>>(), vec![1, 0]);
}

/// Loads `body` (after an SST-2 header) and returns the error text.
fn sst2_error(body: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = b"sentence\tlabel\n".to_vec();
    bytes.extend_from_slice(body);
    let path = write(dir.path(), "bad.tsv", &bytes);
    let err = load_split(&Task::new(TaskName::Sst2, None), &path, all()).unwrap_err().to_string();
    assert!(err.contains("bad.tsv:"), "error must name the file: {err}");
    err
}

#[test]
fn malformed_rows_name_file_and_line() {
    let e = sst2_error(b"good movie\t1\nan extra\tcolumn\t1\n");
    assert!(e.contains("bad.tsv:3:") && e.contains("expected 2 tab-separated columns, found 3"), "{e}");
    let e = sst2_error(b"good movie\t1\nbad label\tmaybe\n");
    assert!(e.contains("bad.tsv:3:") && e.contains("label \"maybe\" is not one of"), "{e}");
    let e = sst2_error(b"ok\t0\nnot \xff utf8\t1\n");
    assert!(e.contains("bad.tsv:3:") && e.contains("not valid UTF-8"), "{e}");
    let e = sst2_error(b"  \t1\n");
    assert!(e.contains("bad.tsv:2:") && e.contains("is empty"), "{e}");
    assert!(e.contains("skip_bad_rows"), "the error says what to do: {e}");
}

#[test]
fn wrong_header_names_the_missing_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "x.tsv", b"text\tlabel\nhi\t1\n");
    let e = load_split(&Task::new(TaskName::Sst2, None), &path, all()).unwrap_err().to_string();
    assert!(e.contains("x.tsv:1:") && e.contains("no column named \"sentence\""), "{e}");
}

#[test]
fn skipping_bad_rows_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "mixed.tsv", b"sentence\tlabel\ngood\t1\nbad\t7\nalso\tgood\t1\n\t0\nfine\t0\n");
    let opts = LoadOptions { skip_bad_rows: true, ..all() };
    let ds = load_split(&Task::new(TaskName::Sst2, None), &path, opts).unwrap();
    assert_eq!(ds.examples.len(), 2);
    assert_eq!(ds.skipped, 3);
}

#[test]
fn missing_file_says_where_data_is_expected() {
    let e = load_split(&Task::new(TaskName::Sst2, None), Path::new("/nonexistent/train.tsv"), all())
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/train.tsv") && e.contains("data.dir"), "{e}");
}
