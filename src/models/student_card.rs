//! `student.json`: what a saved student dir needs besides its weights to be used alone.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config::{expand_path, Experiment, VocabKind};
use crate::files::write_atomic;

/// `student.json` in a student stage dir: what `distill predict` needs besides the weights
/// and `vocab.txt` (WordPiece students also get a copy of the teacher's `tokenizer.json`),
/// so the dir works on its own.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StudentCard {
    pub task: String,
    /// Label names in class order.
    pub labels: Vec<String>,
    pub pair: bool,
    /// "english" or "chinese".
    pub language: String,
    /// "wordpiece" or "jieba".
    pub vocab: String,
    pub max_seq_len: usize,
}

impl StudentCard {
    fn from_experiment(exp: &Experiment) -> Result<StudentCard> {
        let cfg = exp.student.as_ref().context("a student stage needs [student]")?;
        let task = exp.task();
        Ok(StudentCard {
            task: exp.task.name().into(),
            labels: task.labels.clone(),
            pair: task.is_pair(),
            language: format!("{:?}", task.language).to_lowercase(),
            vocab: format!("{:?}", exp.vocab.kind).to_lowercase(),
            max_seq_len: cfg.max_seq_len,
        })
    }

    pub fn save(exp: &Experiment, dir: &Path) -> Result<()> {
        let card = StudentCard::from_experiment(exp)?;
        write_atomic(&dir.join("student.json"), serde_json::to_string_pretty(&card)?.as_bytes())?;
        if exp.vocab.kind == VocabKind::Wordpiece {
            if let Some(file) = wordpiece_tokenizer_json(exp) {
                write_atomic(&dir.join("tokenizer.json"), &std::fs::read(&file)?)?;
            }
        }
        Ok(())
    }

    /// Reads `student.json` of a student dir. Dirs written before it existed are described
    /// by their run's `config.toml` one level up; their WordPiece tokenizer is then the one
    /// that config names (returned beside the card).
    pub fn load(dir: &Path) -> Result<(StudentCard, Option<PathBuf>)> {
        let path = dir.join("student.json");
        if !path.is_file() {
            let config = dir.join("../config.toml");
            if config.is_file() {
                let exp = Experiment::load(&config, &[])?;
                return Ok((StudentCard::from_experiment(&exp)?, wordpiece_tokenizer_json(&exp)));
            }
        }
        let bytes = std::fs::read(&path)
            .with_context(|| format!("{}: cannot read; is this a student dir written by distill?", path.display()))?;
        let card = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a student.json written by distill", path.display()))?;
        Ok((card, None))
    }
}

/// The `tokenizer.json` an experiment's WordPiece vocab comes from, if it names one.
fn wordpiece_tokenizer_json(exp: &Experiment) -> Option<PathBuf> {
    let source = expand_path(exp.vocab.tokenizer.as_deref()?);
    let file = if source.is_dir() { source.join("tokenizer.json") } else { source };
    (file.file_name().is_some_and(|n| n == "tokenizer.json") && file.is_file()).then_some(file)
}
