//! The sweep's Slurm path for real: a one-node cluster started by `scripts/local-slurm`,
//! `scripts/sweep.sbatch` submitted as a job array over the committed 4-point SST-2 grid (on
//! 4,000 sentences), `distill report` as an `afterok` job, and a second array with one task
//! cancelled mid-run and the array resubmitted. The commands are the README's.
//!
//! Needs root (slurmd starts jobs; `local-slurm` installs Debian's slurm-wlm if missing), as CI
//! has. Where Slurm cannot start the test fails with the daemons' logs; set
//! DISTILL_SKIP_SLURM=1 to leave it out on purpose (it then says so).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::sweep_dir;
use distill::report::read_results;
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_distill");
const GRID: &str = "experiments/sweep-sst2-student.toml";
/// A smaller student than the grid's, on 3,000 sentences: each point takes under 1 s an epoch
/// on one core (here), and a task has 4 epochs left to run when it is cancelled after its
/// first. What is checked is the array's bookkeeping, not accuracy.
const GRID_SETTINGS: [&str; 4] = ["data.train_limit=3000", "data.dev_limit=200", "student.hidden_size=64", "student.epochs=5"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The local cluster; stopped (its own daemons only) when dropped, also on a failed assert.
struct Cluster {
    dir: PathBuf,
    conf: String,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let out = Command::new(repo().join("scripts/local-slurm"))
            .arg("start")
            .env("DISTILL_SLURM_DIR", dir)
            .env("DISTILL_SLURM_PORT", "16917")
            .output()
            .expect("cannot run scripts/local-slurm");
        assert!(out.status.success(), "scripts/local-slurm start failed:\n{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let conf = stdout.trim().strip_prefix("export SLURM_CONF=").unwrap_or_else(|| panic!("unexpected output: {stdout}"));
        Cluster { dir: dir.to_path_buf(), conf: conf.to_string() }
    }

    /// A Slurm client command against this cluster, run from the repository root.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.current_dir(repo()).env("SLURM_CONF", &self.conf).env("DISTILL_BIN", BIN);
        command
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self.command(program).args(args).output().unwrap();
        assert!(out.status.success(), "{program} {args:?} failed:\n{}{}", text(&out), self.logs());
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `sbatch --parsable …`: the job id.
    fn sbatch(&self, args: &[&str]) -> String {
        let id = self.run("sbatch", &[&["--parsable"], args].concat());
        id.split(';').next().unwrap().to_string()
    }

    /// Waits until no task of `job` is pending or running; returns each task's final state.
    fn wait(&self, job: &str, limit: Duration) -> Vec<String> {
        let start = Instant::now();
        while !self.run("squeue", &["-h", "-j", job, "-o", "%i %T"]).is_empty() {
            assert!(start.elapsed() < limit, "job {job} still queued after {limit:?}{}", self.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
        let shown = self.run("scontrol", &["show", "job", job]);
        shown.split_whitespace().filter_map(|w| w.strip_prefix("JobState=")).map(str::to_string).collect()
    }

    /// The daemons' logs, for a failure message.
    fn logs(&self) -> String {
        let mut all = String::new();
        for name in ["slurmctld.log", "slurmd.log"] {
            let log = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            all += &format!("\n----- {name}\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        all
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/local-slurm")).arg("stop").env("DISTILL_SLURM_DIR", &self.dir).status();
    }
}

fn sets(out_dir: &Path) -> Vec<String> {
    let mut args = Vec::new();
    for setting in GRID_SETTINGS.iter().map(|s| s.to_string()).chain([format!("out_dir={}", out_dir.display())]) {
        args.push("--set".to_string());
        args.push(setting);
    }
    args
}

fn sha256(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Asserts the sweep's merged `summary.csv` equals the reference's; returns its sha256.
fn same_summary(sweep: &Path, reference: &Path, what: &str) -> String {
    let summary = sweep.join("summary.csv");
    assert_eq!(
        std::fs::read_to_string(&summary).unwrap(),
        std::fs::read_to_string(reference).unwrap(),
        "{what}: the merged summary differs from the unsharded run's"
    );
    sha256(&summary)
}

/// Rows per grid point (in `points.csv` order) over every shard file of a sweep.
fn rows_per_point(sweep: &Path) -> Vec<usize> {
    let points = std::fs::read_to_string(sweep.join("points.csv")).unwrap();
    let run_ids: Vec<&str> = points.lines().skip(1).map(|line| line.split(',').nth(1).unwrap()).collect();
    let mut counts = vec![0; run_ids.len()];
    for entry in std::fs::read_dir(sweep.join("shards")).unwrap() {
        for row in read_results(&entry.unwrap().path()).unwrap() {
            let run_id = Path::new(&row.run_dir).file_name().unwrap().to_string_lossy().to_string();
            let point = run_ids.iter().position(|&id| id == run_id).unwrap_or_else(|| panic!("a result row from no grid point: {run_id}"));
            counts[point] += 1;
        }
    }
    counts
}

#[test]
fn sweep_runs_as_a_slurm_array_and_survives_a_cancelled_task() {
    if std::env::var_os("DISTILL_SKIP_SLURM").is_some() {
        eprintln!("DISTILL_SKIP_SLURM is set: the Slurm test is left out");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let output = |name: &str| format!("--output={}/{name}", logs.display());

    // Reference: the same grid unsharded, outside Slurm.
    let reference = tmp.path().join("reference");
    let started = Instant::now();
    let out = Command::new(BIN).current_dir(repo()).arg("sweep").arg(GRID).args(sets(&reference)).output().unwrap();
    assert!(out.status.success(), "unsharded sweep failed:\n{}", text(&out));
    let reference_summary = sweep_dir(&reference).join("summary.csv");
    eprintln!("unsharded sweep: {:.1} s, summary.csv sha256 {}", started.elapsed().as_secs_f64(), sha256(&reference_summary));

    let started = Instant::now();
    let cluster = Cluster::start(&tmp.path().join("slurm"));
    eprintln!("local cluster up in {:.1} s", started.elapsed().as_secs_f64());

    // The array, then `distill report` once every task has succeeded.
    let arrayed = tmp.path().join("arrayed");
    let grid_args: Vec<String> = sets(&arrayed);
    let grid_args: Vec<&str> = grid_args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let job = cluster.sbatch(
        &[&["--array=0-3", "--cpus-per-task=1", "--mem=2G", &output("distill-sweep-%A_%a.log"), "scripts/sweep.sbatch", GRID], &grid_args[..]]
            .concat(),
    );
    let report_command = format!("{BIN} report {GRID} {}", grid_args.join(" "));
    let report = cluster.sbatch(&[
        &format!("--dependency=afterok:{job}"),
        "--cpus-per-task=1",
        "--mem=1G",
        &output("distill-report-%j.log"),
        "--wrap",
        &report_command,
    ]);
    let states = cluster.wait(&job, Duration::from_secs(600));
    eprintln!("array {job}: 4 tasks (2 at a time, 1 CPU each) in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(states, ["COMPLETED"; 4], "array {job}{}", cluster.logs());
    assert_eq!(cluster.wait(&report, Duration::from_secs(120)), ["COMPLETED"], "report job{}", cluster.logs());
    let sweep = sweep_dir(&arrayed);
    for k in 0..4 {
        assert!(sweep.join(format!("shards/results-{k}-of-4.csv")).is_file(), "task {k} wrote no shard file");
    }
    assert_eq!(rows_per_point(&sweep), [1; 4]);
    let checksum = same_summary(&sweep, &reference_summary, "the array");
    eprintln!("with the afterok report job: {:.1} s; merged summary.csv sha256 {checksum}", started.elapsed().as_secs_f64());

    // A second array: task 1 cancelled after its first epoch, then the array resubmitted.
    let cancelled = tmp.path().join("cancelled");
    let grid_args: Vec<String> = sets(&cancelled);
    let grid_args: Vec<&str> = grid_args.iter().map(String::as_str).collect();
    let submit = |name: &str| {
        cluster.sbatch(&[&["--array=0-3", "--cpus-per-task=1", "--mem=2G", &output(name), "scripts/sweep.sbatch", GRID], &grid_args[..]].concat())
    };
    let started = Instant::now();
    let job = submit("first-%A_%a.log");
    // Cancelled once its first epoch's checkpoint (`student.resume`, written whole) exists.
    let task_log = logs.join(format!("first-{job}_1.log"));
    let checkpoint = loop {
        let log = std::fs::read_to_string(&task_log).unwrap_or_default();
        let run_dir = log.lines().find_map(|line| line.strip_prefix("run ")?.split_once(" → ").map(|(_, dir)| PathBuf::from(dir)));
        if let Some(checkpoint) = run_dir.map(|dir| dir.join("student.resume")).filter(|c| c.is_dir()) {
            break checkpoint;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "task 1 never wrote a checkpoint:\n{log}{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(20));
    };
    cluster.run("scancel", &[&format!("{job}_1")]);
    let mut states = cluster.wait(&job, Duration::from_secs(600));
    states.sort();
    assert_eq!(states, ["CANCELLED", "COMPLETED", "COMPLETED", "COMPLETED"], "array {job}{}", cluster.logs());
    let sweep = sweep_dir(&cancelled);
    assert_eq!(rows_per_point(&sweep), [1, 0, 1, 1], "only the cancelled point should be missing");
    assert!(checkpoint.is_dir(), "the cancelled task's checkpoint is gone: {}", checkpoint.display());

    let again = submit("again-%A_%a.log");
    assert_eq!(cluster.wait(&again, Duration::from_secs(600)), ["COMPLETED"; 4], "resubmitted array{}", cluster.logs());
    let resumed = std::fs::read_to_string(logs.join(format!("again-{again}_1.log"))).unwrap();
    assert!(resumed.contains("resum"), "task 1 did not resume inside its stage:\n{resumed}");
    assert_eq!(rows_per_point(&sweep), [1; 4], "exactly one row per point after the resubmission");
    let out = Command::new(BIN).current_dir(repo()).arg("report").arg(GRID).args(&grid_args).output().unwrap();
    assert!(out.status.success(), "distill report failed:\n{}", text(&out));
    let checksum = same_summary(&sweep, &reference_summary, "the cancelled and resubmitted array");
    eprintln!("cancel + resubmit: {:.1} s in all, summary.csv sha256 {checksum}", started.elapsed().as_secs_f64());
}
