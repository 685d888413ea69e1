//! Resume inside a stage: a run interrupted after every evaluation of the teacher, student
//! and distill stages (each rerun continuing from the last checkpoint) ends with exactly the
//! metrics of an uninterrupted run, and `results.csv` holds one row per stage.
//! (Its own test binary: the interruption is an environment variable of this process.)

mod common;

use std::path::Path;

use distill::config::{Experiment, Stage};
use distill::report::{read_results, ResultRow};
use distill::train::interrupted_at;

fn experiment(model: &Path, out: &Path) -> Experiment {
    Experiment::parse(&common::small_experiment(model, out), "resume.toml", &[]).unwrap()
}

/// The figures a resumed run must reproduce (times and paths differ by nature).
fn figures(rows: &[ResultRow]) -> Vec<(String, u64, u64, usize, usize)> {
    rows.iter().map(|r| (r.stage.clone(), r.dev_accuracy.to_bits(), r.dev_f1.to_bits(), r.best_epoch, r.params)).collect()
}

/// metrics.csv without its elapsed-time column.
fn metrics(out: &Path) -> Vec<String> {
    let run = std::fs::read_dir(out).unwrap().map(|e| e.unwrap().path()).find(|p| p.join("metrics.csv").is_file()).unwrap();
    std::fs::read_to_string(run.join("metrics.csv")).unwrap().lines().map(|l| l.rsplit_once(',').unwrap().0.to_string()).collect()
}

#[test]
fn stages_interrupted_after_every_evaluation_end_with_the_uninterrupted_metrics() {
    let Some((_assets, model)) = common::tiny_teacher() else { return };
    let whole_dir = tempfile::tempdir().unwrap();
    let whole = distill::train::run_experiment(experiment(&model, whole_dir.path())).unwrap();

    let resumed_dir = tempfile::tempdir().unwrap();
    std::env::set_var("DISTILL_STOP_AFTER_EVALUATIONS", "1");
    let mut interruptions = 0;
    let resumed = loop {
        match distill::train::run_experiment(experiment(&model, resumed_dir.path())) {
            Ok(rows) => break rows,
            Err(e) => {
                assert!(e.to_string().contains("stops here"), "{e:#}");
                // `distill reproduce` finds the checkpoint where the stopped stage left it.
                let exp = experiment(&model, resumed_dir.path());
                let at: Vec<usize> = [Stage::Teacher, Stage::Student, Stage::Distill].into_iter().filter_map(|s| interrupted_at(&exp, s)).map(|s| s.step).collect();
                assert!(at.len() == 1 && at[0] > 0, "one stage stopped inside: {at:?}");
                interruptions += 1;
                assert!(interruptions < 40, "no progress");
            }
        }
    };
    std::env::remove_var("DISTILL_STOP_AFTER_EVALUATIONS");
    // Teacher 3 steps × 2 epochs, eval every 2 → steps 2, 3, 4, 6; student the same; distill
    // (about 96 rows, 6 batches × 2 epochs, every 3) → 3, 6, 9, 12. Each evaluation but the
    // last of a stage stops the run once.
    assert!(interruptions >= 9, "interrupted {interruptions} times");
    assert_eq!(figures(&resumed), figures(&whole), "same dev figures as the uninterrupted run");
    assert_eq!(metrics(resumed_dir.path()), metrics(whole_dir.path()), "same metrics rows");
    let rows = read_results(&resumed_dir.path().join("results.csv")).unwrap();
    assert_eq!(rows.iter().map(|r| r.stage.as_str()).collect::<Vec<_>>(), ["teacher", "student", "distill"]);
    let leftovers: Vec<_> = walk(resumed_dir.path()).into_iter().filter(|p| p.ends_with(".resume")).collect();
    assert!(leftovers.is_empty(), "checkpoints of finished stages are removed: {leftovers:?}");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        out.push(path.display().to_string());
        if path.is_dir() && !path.is_symlink() {
            out.extend(walk(&path));
        }
    }
    out
}
