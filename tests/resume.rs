//! The transfer set's teacher pass resumes after an interruption: segments finished before
//! the stop are read back, only the rest runs, and the logits equal an uninterrupted pass.
//! (Its own test binary: the interruption is an environment variable of this process.)

mod common;

use std::sync::atomic::Ordering;

use distill::config::{DeviceName, Precision};
use distill::inference::{cached_teacher_logits, TEACHER_INFERENCE_ROWS};

#[test]
fn an_interrupted_teacher_pass_resumes_and_gives_the_same_logits() {
    let Some((_assets, dir)) = common::tiny_teacher() else { return };
    let words = ["a", "gripping", "film", "dull", "and", "slow", "the", "best", "of", "the", "year", "never", "again"];
    let texts: Vec<(String, Option<String>)> =
        (0..150).map(|i| ((0..1 + i % 9).map(|j| words[(i * 7 + j * 3) % words.len()]).collect::<Vec<_>>().join(" "), None)).collect();
    let tmp = tempfile::tempdir().unwrap();
    // Batch 1: segments of 64 rows, so 150 rows make three.
    let pass = |cache: &str| cached_teacher_logits(&dir, 32, &texts, 1, 2, &tmp.path().join(cache), DeviceName::Cpu, Precision::F32);
    let whole = pass("whole").unwrap().logits;

    std::env::set_var("DISTILL_STOP_AFTER_SEGMENTS", "1");
    let e = pass("resumed").err().expect("the pass stops after one segment").to_string();
    std::env::remove_var("DISTILL_STOP_AFTER_SEGMENTS");
    assert!(e.contains("stops here"), "{e}");
    let partial: Vec<_> = std::fs::read_dir(tmp.path().join("resumed")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(partial.len(), 1, "one partial folder: {partial:?}");
    assert_eq!(std::fs::read_dir(&partial[0]).unwrap().count(), 1, "one finished segment kept");

    let before = TEACHER_INFERENCE_ROWS.load(Ordering::SeqCst);
    let resumed = pass("resumed").unwrap().logits;
    assert_eq!(TEACHER_INFERENCE_ROWS.load(Ordering::SeqCst) - before, 150 - 64, "only the unfinished segments run");
    assert_eq!(resumed, whole, "the resumed pass gives the uninterrupted pass's logits exactly");
    assert!(!partial[0].exists(), "the partial folder is removed once the cache file is written");
}
