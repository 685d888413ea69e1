//! `kill -9` of a small real experiment at a random moment of each phase (teacher, student,
//! the teacher's pass over the transfer set, distill): every rerun continues, and the
//! finished run has one `results.csv` row per stage and the uninterrupted run's figures
//! exactly. CI kills once per phase; `DISTILL_KILLS=20` (or more) is the long run.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use distill::report::{read_results, ResultRow};
use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_distill");

fn run(file: &Path, log: &Path) -> std::process::Child {
    Command::new(BIN)
        // A checkpoint after every step, so that a kill anywhere resumes from the step before.
        .env("DISTILL_CHECKPOINT_EVERY_S", "0")
        .arg("run")
        .arg(file)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn figures(rows: &[ResultRow]) -> Vec<(String, u64, u64, usize)> {
    rows.iter().map(|r| (r.stage.clone(), r.dev_accuracy.to_bits(), r.dev_f1.to_bits(), r.best_epoch)).collect()
}

/// The phases of a run, in order.
const PHASES: [&str; 4] = ["teacher", "student", "teacher pass", "distill"];

/// What the process is doing, from the last line of its log that says.
fn phase(log: &Path) -> &'static str {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    // A stage's "resume Stage:" line says it finished, so the next one had begun (the distill
    // stage's set-up before its teacher pass counts as the student's phase).
    let phases = [
        ("resume Distill", "distill"),
        ("resume Student", "student"),
        ("resume Teacher", "student"),
        ("transfer set:", "teacher pass"),
        ("teacher inference", "teacher pass"),
        ("teacher logits", "distill"),
        ("distill", "distill"),
        ("student", "student"),
        ("teacher", "teacher"),
    ];
    for line in text.lines().rev() {
        if let Some((_, name)) = phases.iter().find(|(prefix, _)| line.starts_with(prefix)) {
            return name;
        }
    }
    "start-up"
}

#[test]
fn runs_killed_at_random_moments_finish_with_the_uninterrupted_figures() {
    let Some((_assets, model)) = common::tiny_teacher() else { return };
    let kills_wanted: usize = std::env::var("DISTILL_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let whole_dir = tempfile::tempdir().unwrap();
    let file = whole_dir.path().join("small.toml");
    std::fs::write(&file, common::small_experiment(&model, whole_dir.path())).unwrap();
    let t0 = Instant::now();
    assert!(run(&file, &whole_dir.path().join("log")).wait().unwrap().success());
    let whole_s = t0.elapsed().as_secs_f64();
    let whole = figures(&read_results(&whole_dir.path().join("results.csv")).unwrap());

    // Each round kills once in each phase, in order: when the log shows the phase began,
    // after a random 0–100 ms (a phase lasts a few hundred); then lets the last rerun finish.
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let mut kills: Vec<&str> = Vec::new();
    let mut rounds = 0;
    while kills.len() < kills_wanted {
        rounds += 1;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("small.toml");
        std::fs::write(&file, common::small_experiment(&model, dir.path())).unwrap();
        let log = dir.path().join("log");
        for target in PHASES.iter().map(Some).chain([None]) {
            let mut child = run(&file, &log);
            let mut kill_at: Option<Instant> = None;
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "a resumed run failed: {}", std::fs::read_to_string(&log).unwrap());
                    break;
                }
                let reached = target.is_some_and(|t| PHASES.iter().position(|p| p == t) <= PHASES.iter().position(|p| *p == phase(&log)));
                if reached && kill_at.is_none() {
                    kill_at = Some(Instant::now() + Duration::from_millis(rng.gen_range(0..100)));
                }
                if kill_at.is_some_and(|at| Instant::now() >= at) {
                    child.kill().unwrap(); // SIGKILL
                    child.wait().unwrap();
                    kills.push(phase(&log));
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let rows = read_results(&dir.path().join("results.csv")).unwrap();
        assert_eq!(rows.iter().map(|r| r.stage.as_str()).collect::<Vec<_>>(), ["teacher", "student", "distill"], "one row per stage");
        assert_eq!(figures(&rows), whole, "round {rounds}: the same figures as the uninterrupted run");
    }
    let count = |p: &str| kills.iter().filter(|k| **k == p).count();
    eprintln!(
        "{} kills in {rounds} rounds (uninterrupted run {whole_s:.0} s): start-up {}, teacher {}, teacher pass {}, student {}, distill {}",
        kills.len(),
        count("start-up"),
        count("teacher"),
        count("teacher pass"),
        count("student"),
        count("distill")
    );
}
