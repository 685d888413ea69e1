//! Sweeps (resume after kill -9, shards in separate processes, Slurm array variables),
//! `distill report`, plots, `distill predict` and `distill table`, through the real binary
//! on small slices of SST-2.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::sweep_dir;
use distill::report::read_results;

const BIN: &str = env!("CARGO_BIN_EXE_distill");

fn sst2() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/SST-2")
}

fn tokenizer() -> PathBuf {
    distill::config::distill_home().join("models/all-MiniLM-L6-v2")
}

/// A 4-point student grid on 1,500 SST-2 sentences; each point takes about a second.
fn grid_file(dir: &Path) -> PathBuf {
    let text = format!(
        r#"
name = "grid"
task = "sst2"
stages = ["student"]

[data]
dir = "{data}"
train_limit = 1500
dev_limit = 200

[vocab]
kind = "wordpiece"
tokenizer = "{tok}"

[student]
embedding_dim = 16
hidden_size = 24
dropout = 0.1
max_seq_len = 40
optimizer = "adam"
lr = 3e-3
batch_size = 32
epochs = 2

[sweep]
"student.lr" = [1e-3, 3e-3]
"student.hidden_size" = [16, 24]
"#,
        data = sst2().display(),
        tok = tokenizer().display()
    );
    let path = dir.join("grid.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn distill(args: &[&str]) -> std::process::Output {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "distill {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn summary(out_dir: &Path) -> String {
    std::fs::read_to_string(sweep_dir(out_dir).join("summary.csv")).unwrap()
}

#[test]
fn sweep_resumes_after_kill_and_shards_merge_to_the_same_table() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = grid_file(tmp.path());
    let grid = grid.to_str().unwrap();
    let out = |name: &str| tmp.path().join(name);
    let set_out = |name: &str| format!("out_dir={}", out(name).display());

    // Reference: one uninterrupted, unsharded sweep.
    distill(&["sweep", grid, "--set", &set_out("whole")]);
    let reference = summary(&out("whole"));
    assert_eq!(reference.lines().count(), 5, "{reference}");
    assert!(reference.starts_with("index,run_id,student.hidden_size,student.lr,stage,params,best_epoch,dev_accuracy,dev_f1"));
    let whole = sweep_dir(&out("whole"));
    for plot in ["dev-vs-student-hidden_size.svg", "dev-vs-student-lr.svg"] {
        let svg = std::fs::read_to_string(whole.join(plot)).unwrap();
        assert!(svg.starts_with("<svg") && svg.matches("<circle").count() >= 4, "{plot}");
    }

    // Interrupted: kill -9 once the first point has finished, then run again.
    let mut child = Command::new(BIN)
        .args(["sweep", grid, "--set", &set_out("killed")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let shard_file = |dir: &Path| dir.join("sweeps");
    loop {
        let first_done = shard_file(&out("killed")).is_dir()
            && read_results(&sweep_dir(&out("killed")).join("shards/results-0-of-1.csv")).is_ok_and(|r| !r.is_empty());
        if first_done {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "the first point never finished");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed = sweep_dir(&out("killed"));
    let before = read_results(&killed.join("shards/results-0-of-1.csv")).unwrap();
    assert!(!before.is_empty() && before.len() < 4, "the kill should land mid-sweep: {} rows", before.len());
    let first_marker = Path::new(&before[0].run_dir).join("student/result.json");
    let first_written = std::fs::metadata(&first_marker).unwrap().modified().unwrap();

    let plan = String::from_utf8(distill(&["sweep", grid, "--set", &set_out("killed"), "--dry-run"]).stdout).unwrap();
    assert_eq!(plan.matches("[finished]").count(), before.len(), "{plan}");

    let rerun = distill(&["sweep", grid, "--set", &set_out("killed")]);
    let log = String::from_utf8_lossy(&rerun.stderr);
    assert_eq!(log.matches("already finished").count(), before.len(), "{log}");
    assert_eq!(std::fs::metadata(&first_marker).unwrap().modified().unwrap(), first_written, "finished points are not rerun");
    assert_eq!(summary(&out("killed")), reference, "resumed sweep differs from the uninterrupted one");

    // Two shards as separate processes at the same time (one told by Slurm's variables).
    let shard0 = Command::new(BIN)
        .args(["sweep", grid, "--set", &set_out("sharded"), "--shard", "0/2"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let shard1 = Command::new(BIN)
        .args(["sweep", grid, "--set", &set_out("sharded")])
        .env("SLURM_ARRAY_TASK_ID", "2")
        .env("SLURM_ARRAY_TASK_MIN", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "2")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for child in [shard0, shard1] {
        let done = child.wait_with_output().unwrap();
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
        assert!(String::from_utf8_lossy(&done.stderr).contains("runs 2 of 4 points"));
    }
    let sharded = sweep_dir(&out("sharded"));
    assert!(sharded.join("shards/results-0-of-2.csv").is_file() && sharded.join("shards/results-1-of-2.csv").is_file());
    distill(&["report", sharded.to_str().unwrap()]);
    assert_eq!(summary(&out("sharded")), reference, "merged shards differ from one unsharded run");
    // Both processes appended to the same results.csv under its lock: no row lost.
    assert_eq!(read_results(&out("sharded").join("results.csv")).unwrap().len(), 4);

    // Each point's run dir has its learning curves.
    let run_dir = PathBuf::from(&before[0].run_dir);
    let curves = std::fs::read_to_string(run_dir.join("curves-student.svg")).unwrap();
    assert!(curves.contains("dev accuracy") && curves.contains("<polyline"), "learning curves drawn");

    // predict on the dev texts reproduces the dev accuracy the run reported.
    let dev = std::fs::read_to_string(sst2().join("dev.tsv")).unwrap();
    let rows: Vec<(&str, &str)> =
        dev.lines().skip(1).take(200).map(|l| l.rsplit_once('\t').unwrap()).collect();
    let input = tmp.path().join("dev-texts.txt");
    std::fs::write(&input, rows.iter().map(|r| format!("{}\n", r.0)).collect::<String>()).unwrap();
    let predicted = distill(&["predict", run_dir.to_str().unwrap(), "--input", input.to_str().unwrap(), "--batch-size", "7"]);
    let csv = String::from_utf8(predicted.stdout).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap(), "label,p_0,p_1,text");
    let mut correct = 0;
    let mut n = 0;
    for (line, (_, gold)) in lines.zip(&rows) {
        let fields: Vec<&str> = line.splitn(4, ',').collect();
        let p: f64 = fields[1].parse::<f64>().unwrap() + fields[2].parse::<f64>().unwrap();
        assert!((p - 1.0).abs() < 1e-4, "{line}");
        correct += (fields[0] == *gold) as usize;
        n += 1;
    }
    assert_eq!(n, 200);
    let accuracy = correct as f64 / n as f64;
    assert!((accuracy - before[0].dev_accuracy).abs() < 1e-9, "predict {accuracy} vs reported {}", before[0].dev_accuracy);
    // The dev file's rows as they are (text, tab, label): an error naming the file and line,
    // not the label read as part of the text.
    let rows_file = tmp.path().join("dev-rows.tsv");
    std::fs::write(&rows_file, dev.lines().skip(1).take(3).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let out = Command::new(BIN).args(["predict", run_dir.to_str().unwrap(), "--input", rows_file.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("dev-rows.tsv:1:") && err.contains("cut -f1"), "{err}");
}

#[test]
fn sweep_errors_name_the_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = grid_file(tmp.path());
    let text = std::fs::read_to_string(&grid).unwrap();
    std::fs::write(&grid, text.replace("\"student.hidden_size\" = [16, 24]", "\"student.hiden_size\" = [16, 24]")).unwrap();
    let out = Command::new(BIN).args(["sweep", grid.to_str().unwrap(), "--dry-run"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("sweep point 0") && err.contains("hiden_size") && err.contains("grid.toml"), "{err}");

    std::fs::write(&grid, text.replace("\"student.lr\" = [1e-3, 3e-3]", "\"student.lr\" = []")).unwrap();
    let out = Command::new(BIN).args(["sweep", grid.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let line = text.lines().position(|l| l.starts_with("\"student.lr\"")).unwrap() + 1;
    assert!(err.contains(&format!("grid.toml:{line}")) && err.contains("non-empty list"), "{err}");

    // `distill run` on a sweep file says to use `distill sweep`.
    let out = Command::new(BIN).args(["run", grid.to_str().unwrap()]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("distill sweep"));

    for bad in ["2/2", "1", "a/b", "0/0"] {
        assert!(distill::sweep::Shard::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(distill::sweep::Shard::parse("1/3").unwrap(), distill::sweep::Shard { index: 1, count: 3 });
}

#[test]
fn table_fills_measured_cells_and_footnotes_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let exp_text = format!(
        r#"
name = "tbl"
task = "sst2"
stages = ["student"]
out_dir = "{out}"

[data]
dir = "{data}"
train_limit = 300
dev_limit = 100

[vocab]
kind = "wordpiece"
tokenizer = "{tok}"

[student]
embedding_dim = 8
hidden_size = 8
dropout = 0.1
optimizer = "adam"
lr = 3e-3
batch_size = 32
epochs = 1
"#,
        out = tmp.path().join("runs").display(),
        data = sst2().display(),
        tok = tokenizer().display()
    );
    let exp_file = tmp.path().join("tbl.toml");
    std::fs::write(&exp_file, exp_text).unwrap();
    let row = distill(&["run", exp_file.to_str().unwrap()]);
    let results = tmp.path().join("runs/results.csv");
    let measured = read_results(&results).unwrap();
    assert_eq!(measured.len(), 1, "{}", String::from_utf8_lossy(&row.stderr));

    // Running the same experiment again does not train again or add a row.
    let again = distill(&["run", exp_file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already finished"));
    assert_eq!(read_results(&results).unwrap().len(), 1);

    let spec = tmp.path().join("paper.toml");
    std::fs::write(
        &spec,
        format!(
            r#"
[[column]]
title = "SST-2"
file = "{file}"
seed = {{ teacher = "bert-base-uncased", vectors = "word2vec GoogleNews (300d)", n_iter = 20, student_result = "0.854" }}
student = {{ set = ["stages=[\"student\"]", "name=\"another-name\""] }}
distilled = {{ set = ["student.epochs=2"] }}
"#,
            file = exp_file.display()
        ),
    )
    .unwrap();
    // No run ids in the table file: each cell's stage key is computed from the file (the
    // student cell's name and stages list are not inputs of the stage, so its run is found).
    let out = distill(&["table", spec.to_str().unwrap(), "--out", tmp.path().to_str().unwrap()]);
    let md = String::from_utf8(out.stdout).unwrap();
    assert_eq!(md, std::fs::read_to_string(tmp.path().join("table.md")).unwrap());
    let value = format!("{:.4}", measured[0].dev_accuracy);
    assert!(md.contains(&format!("| Bi-LSTM | {value} [2] |")), "{md}");
    assert!(md.contains("| Teacher | — [1] |") && md.contains("| Distilled Bi-LSTM | — [3] |"), "{md}");
    assert!(md.contains("[1] SST-2 / Teacher: not run yet: distill run"), "{md}");
    assert!(md.contains("[2] SST-2 / Bi-LSTM: vectors random init (seed: word2vec GoogleNews (300d))"), "{md}");
    assert!(md.contains("seed's result 0.854"), "{md}");
    assert!(md.contains("[3] SST-2 / Distilled Bi-LSTM: not run yet: distill run"), "{md}");
    let csv = std::fs::read_to_string(tmp.path().join("table.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "a header and one line per cell: {csv}");
    assert!(csv.contains(&measured[0].run_dir.rsplit('/').next().unwrap().to_string()));

    // A column over seeds: the cell shows mean ± sample std of the seeds that finished, and
    // its footnote says how many and how to run the rest.
    for seed in [11, 12] {
        let out = distill(&["run", exp_file.to_str().unwrap(), "--set", &format!("seed={seed}")]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let by_seed: Vec<f64> = read_results(&results).unwrap()[1..].iter().map(|r| r.dev_accuracy).collect();
    assert_eq!(by_seed.len(), 2);
    let mean = (by_seed[0] + by_seed[1]) / 2.0;
    let std = ((by_seed[0] - mean).powi(2) + (by_seed[1] - mean).powi(2)).sqrt(); // n − 1 = 1
    std::fs::write(&spec, format!("[[column]]\ntitle = \"SST-2\"\nfile = \"{}\"\nseeds = [11, 12, 13]\n", exp_file.display())).unwrap();
    let out = distill(&["table", spec.to_str().unwrap(), "--out", tmp.path().to_str().unwrap()]);
    let md = String::from_utf8(out.stdout).unwrap();
    assert!(md.contains(&format!("| Bi-LSTM | {mean:.4} ± {std:.4} [2] |")), "{md}");
    assert!(md.contains("[2] SST-2 / Bi-LSTM: not run yet: distill run"), "{md}");
    assert!(md.contains("--set seed=13 --set 'stages=[\"student\"]'; mean ± sample std over seeds 11, 12, 13 (n = 2 of 3)"), "{md}");
}
