//! Stage keys: each stage is known by the inputs it reads. A key must ignore every setting
//! its stage does not read and change with every one it does.

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

#[test]
fn keys_name_their_stage_and_are_stable() {
    let [teacher, student, distill] = keys(&[]);
    assert!(teacher.starts_with("mrpc-") && student.starts_with("student-") && distill.starts_with("distill-"), "{teacher} {student} {distill}");
    assert_eq!(keys(&[]), [teacher, student, distill], "the same file gives the same keys");
}
