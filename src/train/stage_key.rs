//! Each stage is known by the inputs it reads, not by the whole experiment: the teacher by
//! task, data, its seed (`teacher.seed`, else `seed`) and `[teacher]`; the student alone by
//! task, data, seed, device, vocab, embeddings (and the teacher that makes them, if one does)
//! and `[student]`; the distill stage by its teacher, the transfer set (`[augment]`, whose
//! `seed` defaults to `seed`), `[distill]`, the student's architecture, and the same data,
//! seed, vocab and embeddings. A stage whose key already finished anywhere under `out_dir` is
//! reused, whatever `stages` list or other settings the run has; `distill table` and
//! `distill reproduce` find each cell's run the same way.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::teacher::{finished_teacher, teacher_dir};
use crate::config::{expand_path, DataConfig, DeviceName, EmbeddingsConfig, Experiment, PairFeatures, Stage, TaskName, VectorsTeacher, VocabConfig};
use crate::data::DataDigest;
use crate::report::ResultRow;

/// The key of `stage` of `exp`: `STAGE-HASH` (the teacher's is its dir name, `TASK-HASH`).
pub fn stage_key(exp: &Experiment, stage: Stage) -> String {
    #[derive(Serialize)]
    struct Common<'a> {
        task: TaskName,
        seed: u64,
        device: DeviceName,
        data: &'a DataConfig,
        vocab: &'a VocabConfig,
        embeddings: &'a EmbeddingsConfig,
        /// The teacher that makes the vectors (`source = "teacher"`), named as the distill
        /// stage names its teacher; absent otherwise, so other keys stay as they were.
        #[serde(skip_serializing_if = "Option::is_none")]
        vectors_teacher: Option<String>,
    }
    // Built only for the student stages: the vectors' teacher may be named by its own key.
    let common = || {
        let vectors_teacher = exp.vectors_teacher().map(|t| match t {
            VectorsTeacher::Dir(dir) => format!("dir:{dir}"),
            VectorsTeacher::Trained => format!("trained:{}", stage_key(exp, Stage::Teacher)),
            VectorsTeacher::Pretrained(model) => format!("pretrained:{model}"),
        });
        Common { task: exp.task, seed: exp.seed, device: exp.device, data: &exp.data, vocab: &exp.vocab, embeddings: &exp.embeddings, vectors_teacher }
    };
    match stage {
        Stage::Teacher => teacher_dir(exp).file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
        Stage::Student => {
            #[derive(Serialize)]
            struct StudentInputs<'a> {
                common: Common<'a>,
                student: &'a Option<crate::config::StudentConfig>,
            }
            format!("student-{}", hash(&StudentInputs { common: common(), student: &exp.student }))
        }
        Stage::Distill => {
            /// What the distill stage reads of `[student]`: the architecture, not its training knobs.
            #[derive(Serialize)]
            struct Architecture {
                embedding_dim: usize,
                hidden_size: usize,
                fc_size: usize,
                pair_features: PairFeatures,
                max_seq_len: usize,
                train_embeddings: bool,
            }
            #[derive(Serialize)]
            struct DistillInputs<'a> {
                common: Common<'a>,
                /// The fine-tuned teacher: `trained:KEY` of the teacher stage, or `dir:PATH`.
                teacher: String,
                teacher_max_seq_len: usize,
                student: Option<Architecture>,
                augment: crate::config::AugmentConfig,
                distill: &'a Option<crate::config::DistillConfig>,
            }
            let teacher = match exp.distill.as_ref().and_then(|d| d.teacher.as_ref()) {
                Some(dir) => format!("dir:{dir}"),
                None => format!("trained:{}", stage_key(exp, Stage::Teacher)),
            };
            let student = exp.student.as_ref().map(|s| Architecture {
                embedding_dim: s.embedding_dim,
                hidden_size: s.hidden_size,
                fc_size: s.fc_size(),
                pair_features: s.pair_features,
                max_seq_len: s.max_seq_len,
                train_embeddings: s.train_embeddings,
            });
            let inputs = DistillInputs {
                common: common(),
                teacher,
                teacher_max_seq_len: exp.teacher.as_ref().map_or(128, |t| t.max_seq_len),
                student,
                // `augment.seed = 1` and `seed = 1` draw the same transfer set (an unset one keeps the old key).
                augment: crate::config::AugmentConfig { seed: Some(exp.augment_seed()).filter(|&s| s != exp.seed), ..exp.augment.clone() },
                distill: &exp.distill,
            };
            format!("distill-{}", hash(&inputs))
        }
    }
}

fn hash(value: &impl Serialize) -> String {
    let text = toml::to_string(value).expect("serialisable");
    Sha256::digest(text.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// A stage that finished somewhere under `out_dir`, found by its key.
#[derive(Debug, Clone)]
pub struct FinishedStage {
    /// Its result row, as written when it finished.
    pub row: ResultRow,
    /// The stage's folder (a run's `STAGE/`, or the teacher dir).
    pub dir: PathBuf,
}

/// What [`find_finished`] found of a stage.
#[derive(Debug)]
pub enum Lookup {
    Finished(FinishedStage),
    /// Only stages that recorded other train or dev files than the experiment's are now: the
    /// newest one's folder and what changed (`FILE has changed since (…)`).
    ReadOtherData { dir: PathBuf, change: String },
    Missing,
}

impl Lookup {
    pub fn finished(self) -> Option<FinishedStage> {
        match self {
            Lookup::Finished(found) => Some(found),
            _ => None,
        }
    }
}

/// Where `stage` of `exp` already finished, if anywhere under its `out_dir`: the teacher in
/// its dir; the student stages in any run dir whose saved `config.toml` gives the same key
/// (so runs made before keys existed are found too), newest first. A stage that recorded
/// other train or dev files than `exp`'s are now (see [`DataDigest`]) is passed over.
pub fn find_finished(exp: &Experiment, stage: Stage) -> Lookup {
    let data = DataDigest::of_experiment(exp).ok();
    let mut other_data = None;
    let mut same_data = |found: &FinishedStage| match data.as_ref().map(|d| d.check(&found.dir)) {
        Some(Err(change)) => {
            other_data.get_or_insert((found.dir.clone(), change));
            false
        }
        _ => true,
    };
    let found = if stage == Stage::Teacher {
        let dir = teacher_dir(exp);
        finished_teacher(&dir).ok().flatten().map(|row| FinishedStage { row, dir }).filter(&mut same_data)
    } else {
        let key = stage_key(exp, stage);
        finished_runs(&expand_path(&exp.out_dir), stage).into_iter().filter(|(k, _)| *k == key).map(|(_, found)| found).find(|found| {
            let weights = found.dir.join("model.safetensors");
            let intact = crate::files::safetensors_intact(&weights);
            if !intact {
                eprintln!("{}: missing, truncated or damaged; that finished {} stage is not reused", weights.display(), stage.name());
            }
            intact && same_data(found)
        })
    };
    match (found, other_data) {
        (Some(found), _) => Lookup::Finished(found),
        (None, Some((dir, change))) => Lookup::ReadOtherData { dir, change },
        (None, None) => Lookup::Missing,
    }
}

/// Every finished `stage` under `out_dir` with its key, newest first. Run dirs whose config
/// no longer parses (written by a much older version) are passed over.
pub fn finished_runs(out_dir: &Path, stage: Stage) -> Vec<(String, FinishedStage)> {
    let Ok(entries) = std::fs::read_dir(out_dir) else { return Vec::new() };
    let mut found: Vec<(String, FinishedStage)> = Vec::new();
    for entry in entries.flatten() {
        let run_dir = entry.path();
        let dir = run_dir.join(stage.name());
        let (config, result) = (run_dir.join("config.toml"), dir.join("result.json"));
        // A reused stage is a link to the run that trained it: count that run only.
        if !result.is_file() || !config.is_file() || dir.is_symlink() {
            continue;
        }
        let Ok(exp) = Experiment::load(&config, &[]) else { continue };
        let Some(row) = std::fs::read(&result).ok().and_then(|b| serde_json::from_slice::<ResultRow>(&b).ok()) else { continue };
        found.push((stage_key(&exp, stage), FinishedStage { row, dir }));
    }
    found.sort_by_key(|(_, f)| std::cmp::Reverse(f.row.finished_at_unix));
    found
}
