//! Stage keys: each stage is known by the inputs it reads. A key must ignore every setting
//! its stage does not read and change with every one it does; a finished stage is reused by
//! key across runs and `stages` lists.

mod common;

use std::path::Path;

use dfdx::prelude::Cpu;
use distill::config::{Experiment, Stage};
use distill::train::stage_key::stage_key;

fn keys(overrides: &[&str]) -> [String; 3] {
    let sets: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let exp = Experiment::load(std::path::Path::new("experiments/mrpc.toml"), &sets).unwrap_or_else(|e| panic!("{overrides:?}: {e}"));
    [stage_key(&exp, Stage::Teacher), stage_key(&exp, Stage::Student), stage_key(&exp, Stage::Distill)]
}

/// One override per setting of the file, with the stages whose keys it must change
/// (T teacher, S student alone, D distill).
const CASES: &[(&str, &str)] = &[
    // Identity and run settings: none is read by a stage.
    ("name=\"other\"", ""),
    ("stages=[\"teacher\"]", ""),
    ("out_dir=\"elsewhere\"", ""),
    // Read by every stage.
    ("seed=2", "TSD"),
    ("data.train_limit=100", "TSD"),
    ("data.dev_limit=50", "TSD"),
    // The teacher trains on the CPU whatever the device; the students do not.
    ("device=\"cuda\"", "SD"),
    // [teacher]: the teacher, and the distill stage through it.
    ("teacher.lr=3e-5", "TD"),
    ("teacher.epochs=3", "TD"),
    ("teacher.batch_size=8", "TD"),
    ("teacher.max_seq_len=64", "TD"),
    ("teacher.warmup_ratio=0.2", "TD"),
    ("teacher.weight_decay=0.0", "TD"),
    ("teacher.max_grad_norm=0.5", "TD"),
    ("teacher.eval_every=10", "TD"),
    ("teacher.eval_batch_size=32", "TD"),
    ("teacher.seed=7", "TD"),
    ("augment.seed=7", "D"),
    ("teacher.model=\"/elsewhere/bert\"", "TD"),
    // The student's vocab and vectors: both student stages.
    ("vocab.tokenizer=\"/elsewhere/tok\"", "SD"),
    ("embeddings.path=\"/elsewhere/vectors.txt\"", "SD"),
    // [student] architecture: both student stages.
    ("student.embedding_dim=100", "SD"),
    ("student.hidden_size=200", "SD"),
    ("student.fc_size=100", "SD"),
    ("student.pair_features=\"seed\"", "SD"),
    ("student.max_seq_len=32", "SD"),
    ("student.train_embeddings=false", "SD"),
    // [student] training knobs: the student alone only ([distill] has its own).
    ("student.lr=0.5", "S"),
    ("student.optimizer=\"adam\"", "S"),
    ("student.batch_size=16", "S"),
    ("student.epochs=5", "S"),
    ("student.dropout=0.1", "S"),
    ("student.eval_every=10", "S"),
    ("student.max_grad_norm=5.0", "S"),
    // [augment] and [distill]: the distill stage only.
    ("augment.p_mask=0.2", "D"),
    ("augment.p_pos=0.2", "D"),
    ("augment.p_ng=0.5", "D"),
    ("augment.ngram_range=[1, 3]", "D"),
    ("augment.n_iter=2", "D"),
    ("augment.drop_duplicates=false", "D"),
    ("augment.mask_token=\"[UNK]\"", "D"),
    ("augment.pos_lexicon=\"/elsewhere/lexicon.txt\"", "D"),
    ("distill.alpha=0.3", "D"),
    ("distill.loss=\"kl\"", "D"),
    ("distill.temperature=2.0", "D"),
    ("distill.lr=0.5", "D"),
    ("distill.optimizer=\"adam\"", "D"),
    ("distill.batch_size=32", "D"),
    ("distill.epochs=2", "D"),
    ("distill.dropout=0.1", "D"),
    ("distill.eval_every=10", "D"),
    ("distill.max_grad_norm=5.0", "D"),
    ("distill.teacher_batch_size=32", "D"),
    ("distill.teacher_precision=\"int8\"", "D"),
    ("distill.teacher=\"/elsewhere/teacher\"", "D"),
];

#[test]
fn stage_keys_change_with_what_each_stage_reads_and_nothing_else() {
    let base = keys(&[]);
    for (set, affects) in CASES {
        let changed = keys(&[set]);
        for (i, (stage, letter)) in ["teacher", "student", "distill"].iter().zip(['T', 'S', 'D']).enumerate() {
            assert_eq!(
                changed[i] != base[i],
                affects.contains(letter),
                "--set {set}: the {stage} key {} ({} → {})",
                if affects.contains(letter) { "must change" } else { "must not change" },
                base[i],
                changed[i]
            );
        }
    }
}

/// `teacher.seed` and `augment.seed` split the seeds: with both fixed, another `seed`
/// changes the student stages' keys only, and the teacher of `teacher.seed = 2` is the
/// teacher of `seed = 2`.
#[test]
fn teacher_and_transfer_set_seeds_are_split_from_the_training_seed() {
    let fixed = ["teacher.seed=1", "augment.seed=1"];
    let [teacher_1, student_1, distill_1] = keys(&[&fixed[..], &["seed=1"]].concat());
    let [teacher_2, student_2, distill_2] = keys(&[&fixed[..], &["seed=2"]].concat());
    assert_eq!(teacher_1, teacher_2, "one teacher for every student seed");
    assert!(student_1 != student_2 && distill_1 != distill_2, "the students train again");
    assert_eq!(keys(&["teacher.seed=2"])[0], keys(&["seed=2"])[0], "teacher.seed = 2 is the teacher of seed = 2");
    assert_eq!(keys(&["teacher.seed=1"])[0], keys(&["seed=1"])[0]);
    assert_eq!(keys(&["augment.seed=1", "seed=1"])[2], keys(&["seed=1"])[2], "augment.seed = seed is the transfer set of an unset one");
    assert_eq!(distill_1, keys(&["seed=1"])[2], "seed 1 of a split sweep finds the run made without the split");
    assert_ne!(keys(&["augment.seed=3"])[2], keys(&[])[2], "another transfer set is another distill stage");
}

/// With `[embeddings] source = "teacher"` the student stages read the teacher: its key
/// (trained) or its dir; their keys follow it, the teacher's own key does not move.
#[test]
fn teacher_made_vectors_key_the_students_by_their_teacher() {
    let teacher_vectors = "embeddings={source=\"teacher\"}";
    let [teacher, student, distill] = keys(&[teacher_vectors]);
    assert_eq!(teacher, keys(&[])[0]);
    assert_ne!(student, keys(&[])[1], "other vectors, another student");
    let [_, student_2, distill_2] = keys(&[teacher_vectors, "teacher.lr=3e-5"]);
    assert!(student_2 != student && distill_2 != distill, "another fine-tuned teacher makes other vectors");
    let [_, pretrained, _] = keys(&[teacher_vectors, "stages=[\"student\"]"]);
    assert_ne!(pretrained, student, "without the teacher stage the pretrained teacher.model makes them");
    assert_ne!(keys(&[teacher_vectors, "embeddings.pooling=\"cls\""])[1], student);
}

#[test]
fn keys_name_their_stage_and_are_stable() {
    let [teacher, student, distill] = keys(&[]);
    assert!(teacher.starts_with("mrpc-") && student.starts_with("student-") && distill.starts_with("distill-"), "{teacher} {student} {distill}");
    assert_eq!(keys(&[]), [teacher, student, distill], "the same file gives the same keys");
}

/// Stages are reused by key across runs: a second run of the same file with another
/// `distill.alpha` reuses the teacher and the student alone and trains only the distill
/// stage; a run listing only the student stage (another name, another alpha) reuses it and
/// links it into its own run dir. `results.csv` gets one row per stage actually trained.
#[test]
fn finished_stages_are_reused_by_key_across_runs_and_stage_lists() {
    let Some((_assets, model_dir)) = common::tiny_teacher() else { return };
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/SST-2");
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("reuse.toml");
    std::fs::write(
        &file,
        format!(
            r#"name = "reuse"
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
epochs = 1
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
epochs = 1
[distill]
alpha = 0.5
optimizer = "adadelta"
lr = 1.0
batch_size = 16
epochs = 1
dropout = 0.1
"#,
            out = out.path().display(),
            data = data.display(),
            model = model_dir.display()
        ),
    )
    .unwrap();
    let results = out.path().join("results.csv");
    let stages_in_results = || -> Vec<String> { distill::report::read_results(&results).unwrap().into_iter().map(|r| r.stage).collect() };
    let run = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        distill::train::run_experiment(distill::config::Experiment::load(&file, &sets).unwrap()).unwrap()
    };

    let first = run(&[]);
    assert_eq!(stages_in_results(), ["teacher", "student", "distill"]);

    let second = run(&["distill.alpha=0.3"]);
    assert_ne!(first[0].run_dir, second[0].run_dir, "another config, another run dir");
    assert_eq!(stages_in_results(), ["teacher", "student", "distill", "distill"], "only the distill stage trains again");
    for (a, b) in first.iter().zip(&second).take(2) {
        // The same finish time: the row of the run that trained it, not a new training.
        assert_eq!((a.dev_accuracy, a.finished_at_unix), (b.dev_accuracy, b.finished_at_unix), "{} reused", a.stage);
    }
    let second_dir = Path::new(&second[0].run_dir);
    assert!(second_dir.join("student").is_symlink() && second_dir.join("student/model.safetensors").is_file());
    assert!(!second_dir.join("distill").is_symlink());

    let third = run(&["name=\"reuse-student-only\"", "stages=[\"student\"]", "distill.alpha=0.9"]);
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].dev_accuracy, first[1].dev_accuracy);
    assert_eq!(stages_in_results().len(), 4, "a reused stage adds no results row");
    let third_dir = Path::new(&third[0].run_dir);
    let model = distill::models::bilstm::BiLstmStudent::load(&third_dir.join("student/model.safetensors"), &Cpu::default());
    assert!(model.is_ok(), "the linked student loads from the new run dir");

    // A table column over seeds with the teacher's seed fixed: the teacher cell is the one run
    // the seeds share (no ± of a run against itself); the student cell waits for seed 2.
    let spec = format!("[[column]]\ntitle = \"T\"\nfile = {:?}\nset = [\"teacher.seed=1\"]\nseeds = [1, 2]\n", file.display().to_string());
    let cells = distill::table::build(&distill::table::TableSpec::parse(&spec, "paper.toml").unwrap()).unwrap();
    let teacher = &cells[0];
    assert_eq!((teacher.runs, teacher.value.clone()), (1, format!("{:.4}", first[0].dev_accuracy)), "{teacher:?}");
    assert!(teacher.footnote.starts_with("one run shared by seeds 1, 2"), "{}", teacher.footnote);
    let student = &cells[1];
    assert_eq!(student.runs, 1);
    assert!(student.footnote.contains("--set seed=2") && student.footnote.contains("(n = 1 of 2)"), "{}", student.footnote);
}
