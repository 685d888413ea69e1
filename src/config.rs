//! Experiment files: TOML → a typed, range-checked [`Experiment`].
//!
//! Every error names the file, the line where it can be found, and the key path
//! (`student.dropout`), and says what is allowed. Unknown keys are rejected.
//! `--set key.path=value` overrides are applied to the parsed TOML before it is
//! typed, so they are checked exactly like values written in the file.

use std::fmt;
use std::path::{Path, PathBuf};

pub use crate::ops::packed::Precision;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The experiment that `distill run` uses when no file is given: a few-minute real SST-2 run.
pub const QUICKSTART_TOML: &str = include_str!("../experiments/quickstart.toml");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Names the run directory and the rows of `results.csv`.
    pub name: String,
    pub task: TaskName,
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// Which stages run, in pipeline order.
    #[serde(default = "defaults::stages")]
    pub stages: Vec<Stage>,
    /// Where the student and distill stages train and the transfer set's teacher logits are
    /// computed: "cpu", or "cuda" (teacher fine-tuning stays on the CPU).
    #[serde(default)]
    pub device: DeviceName,
    /// Where run directories and `results.csv` go.
    #[serde(default = "defaults::out_dir")]
    pub out_dir: String,
    pub data: DataConfig,
    pub vocab: VocabConfig,
    #[serde(default)]
    pub embeddings: EmbeddingsConfig,
    /// The BERT teacher (required by the "teacher" stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<TeacherConfig>,
    /// The Bi-LSTM student (required by the "student" and "distill" stages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student: Option<StudentConfig>,
    /// How the transfer set is augmented (used by the "distill" stage).
    #[serde(default, skip_serializing_if = "AugmentConfig::is_default")]
    pub augment: AugmentConfig,
    /// Training the student on the teacher's logits (required by the "distill" stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillConfig>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TaskName {
    Sst2,
    Mrpc,
    Qqp,
    Chnsenticorp,
    Custom,
}

impl TaskName {
    /// As written in experiment files, `results.csv` and teacher dir names.
    pub fn name(self) -> &'static str {
        match self {
            TaskName::Sst2 => "sst2",
            TaskName::Mrpc => "mrpc",
            TaskName::Qqp => "qqp",
            TaskName::Chnsenticorp => "chnsenticorp",
            TaskName::Custom => "custom",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Teacher,
    Student,
    Distill,
}

impl Stage {
    /// As written in experiment files, results.csv and run dirs.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Teacher => "teacher",
            Stage::Student => "student",
            Stage::Distill => "distill",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceName {
    #[default]
    Cpu,
    Cuda,
}

impl DeviceName {
    /// As written in experiment files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DeviceName::Cpu => "cpu",
            DeviceName::Cuda => "cuda",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Folder holding the split files; relative paths resolve against the working directory.
    pub dir: String,
    #[serde(default = "defaults::train_file")]
    pub train: String,
    #[serde(default = "defaults::dev_file")]
    pub dev: String,
    /// Skip malformed rows (and report how many) instead of stopping at the first one.
    #[serde(default)]
    pub skip_bad_rows: bool,
    /// Use only the first N training rows (0 = all). For quick runs and tests.
    #[serde(default)]
    pub train_limit: usize,
    /// Use only the first N dev rows (0 = all).
    #[serde(default)]
    pub dev_limit: usize,
    /// Column names and label values of a `task = "custom"` TSV.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<CustomColumns>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CustomColumns {
    pub text_a: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_b: Option<String>,
    pub label: String,
    /// The label strings, in class-index order (e.g. ["negative", "positive"]).
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VocabKind {
    /// The WordPiece vocab of a BERT model dir (shared with the teacher, as in the seed).
    Wordpiece,
    /// jieba words counted in the training data.
    Jieba,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VocabConfig {
    pub kind: VocabKind,
    /// For `wordpiece`: a BERT model dir (with `tokenizer.json` or `vocab.txt`), or one of those files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// For `jieba`: drop words seen fewer times than this in the training data.
    #[serde(default = "defaults::min_count")]
    pub min_count: usize,
    /// For `jieba`: keep at most this many words, most frequent first (0 = no limit).
    #[serde(default)]
    pub max_size: usize,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VectorFormat {
    Glove,
    Word2vecText,
    Word2vecBinary,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsConfig {
    /// Pretrained word vectors; without it (and without `source = "teacher"`) the embedding starts random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<VectorFormat>,
    /// `"teacher"`: vectors made from the experiment's teacher, one per vocab entry
    /// (see `embeddings::teacher`); `"file"` (the default): `path` and `format`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<VectorSource>,
    /// Teacher vectors: the hidden state after this many layers (default: all; 0: the embeddings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// Teacher vectors: how an entry's positions become one vector (default `"mean"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Pooling>,
    /// Teacher vectors: `"sif"` scales each vector by a/(a + p(word)), p from training-set counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighting: Option<Weighting>,
}

impl EmbeddingsConfig {
    pub fn from_teacher(&self) -> bool {
        self.source == Some(VectorSource::Teacher)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VectorSource {
    File,
    Teacher,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The mean of the entry's own pieces' hidden states.
    #[default]
    Mean,
    /// The hidden state at `[CLS]`.
    Cls,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Weighting {
    #[default]
    None,
    /// Smooth inverse frequency (Arora et al. 2017), as Model2Vec weights its vectors.
    Sif,
}

/// Which teacher makes the student's vectors (`[embeddings] source = "teacher"`).
#[derive(Debug, Clone, PartialEq)]
pub enum VectorsTeacher {
    /// `distill.teacher`: a fine-tuned teacher dir.
    Dir(String),
    /// The one this experiment's teacher stage fine-tunes (`teacher` is in `stages`).
    Trained,
    /// `teacher.model` as downloaded.
    Pretrained(String),
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerName {
    Adadelta,
    Adam,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PairFeatures {
    /// `[a, b, |a−b|, a·b]`, as in Tang et al. 2019.
    Tang,
    /// `[a, b, a+b, |a−b|]`, the PaddleNLP seed's variant.
    Seed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StudentConfig {
    pub embedding_dim: usize,
    pub hidden_size: usize,
    /// Width of the tanh layer after the encoder (defaults to `hidden_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fc_size: Option<usize>,
    pub dropout: f64,
    #[serde(default = "defaults::pair_features")]
    pub pair_features: PairFeatures,
    /// Longer texts are cut to this many tokens.
    #[serde(default = "defaults::max_seq_len")]
    pub max_seq_len: usize,
    pub optimizer: OptimizerName,
    pub lr: f64,
    pub batch_size: usize,
    pub epochs: usize,
    /// Evaluate on dev every N steps as well as after each epoch (0 = only after each epoch).
    #[serde(default)]
    pub eval_every: usize,
    /// Clip the global gradient norm to this value (0 = no clipping).
    #[serde(default)]
    pub max_grad_norm: f64,
    /// Fine-tune the word embeddings (true) or keep them frozen.
    #[serde(default = "defaults::yes")]
    pub train_embeddings: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    /// An HF BERT model dir (`config.json`, `model.safetensors`, `tokenizer.json` or `vocab.txt`)
    /// to fine-tune: a pretrained encoder, or a fine-tuned teacher dir to continue from.
    pub model: String,
    /// Texts (pairs: both sides together, with [CLS]/[SEP]) are cut to this many tokens.
    #[serde(default = "defaults::max_seq_len")]
    pub max_seq_len: usize,
    pub batch_size: usize,
    /// Peak learning rate of AdamW (reached after warm-up, then decayed linearly to 0).
    pub lr: f64,
    pub epochs: usize,
    /// Share of all steps spent warming the learning rate up from 0.
    #[serde(default = "defaults::warmup_ratio")]
    pub warmup_ratio: f64,
    /// AdamW's decoupled weight decay (not applied to biases and LayerNorm).
    #[serde(default = "defaults::weight_decay")]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value (0 = no clipping).
    #[serde(default = "defaults::one")]
    pub max_grad_norm: f64,
    /// Evaluate on dev every N steps as well as after each epoch (0 = only after each epoch).
    #[serde(default)]
    pub eval_every: usize,
    /// Batch size for evaluation and teacher inference.
    #[serde(default = "defaults::eval_batch_size")]
    pub eval_batch_size: usize,
    /// The teacher's own seed (default: the experiment's `seed`): fixed, runs over several
    /// student seeds share one fine-tuned teacher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Chance that a word becomes `mask_token`.
    #[serde(default)]
    pub p_mask: f64,
    /// Chance that a word is replaced by a training-data word with the same part of speech.
    #[serde(default)]
    pub p_pos: f64,
    /// Chance that only a random n-gram of an augmented text is kept.
    #[serde(default)]
    pub p_ng: f64,
    /// Smallest and largest n of n-gram sampling.
    #[serde(default = "defaults::ngram_range")]
    pub ngram_range: [usize; 2],
    /// Augmented copies per training example (0 = the transfer set is the training set).
    #[serde(default)]
    pub n_iter: usize,
    /// Drop copies identical to the original or to an earlier copy.
    #[serde(default = "defaults::yes")]
    pub drop_duplicates: bool,
    /// The word that masking writes (the seed found `[UNK]` better than `[MASK]` for Chinese).
    #[serde(default = "defaults::mask_token")]
    pub mask_token: String,
    /// English POS lexicon (`word TAG` lines) for `p_pos`; Chinese uses jieba's tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos_lexicon: Option<String>,
    /// The transfer set's seed (default: the experiment's `seed`): fixed, runs over several
    /// student seeds share one transfer set and its cached teacher logits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl AugmentConfig {
    /// No augmentation at all (left out of saved configs, so their hashes stay put).
    pub fn is_default(&self) -> bool {
        *self == AugmentConfig::default()
    }
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            p_mask: 0.0,
            p_pos: 0.0,
            p_ng: 0.0,
            ngram_range: defaults::ngram_range(),
            n_iter: 0,
            drop_duplicates: true,
            mask_token: defaults::mask_token(),
            pos_lexicon: None,
            seed: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DistillLoss {
    /// Mean squared error between student and teacher logits (Tang et al.; the seed).
    Mse,
    /// KL divergence between softened distributions at `temperature`, scaled by T².
    Kl,
    /// Cross-entropy on gold labels only (no teacher signal; a control).
    Ce,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// A fine-tuned teacher dir (HF format). Default: the one this experiment's "teacher"
    /// stage produces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<String>,
    #[serde(default = "defaults::distill_loss")]
    pub loss: DistillLoss,
    /// Weight of cross-entropy on gold labels: loss = alpha·CE + (1 − alpha)·`loss`.
    #[serde(default)]
    pub alpha: f64,
    /// Softening temperature of `kl`.
    #[serde(default = "defaults::one")]
    pub temperature: f64,
    /// The student's training settings for this stage (architecture from [student]).
    pub optimizer: OptimizerName,
    pub lr: f64,
    pub batch_size: usize,
    pub epochs: usize,
    pub dropout: f64,
    #[serde(default)]
    pub eval_every: usize,
    #[serde(default)]
    pub max_grad_norm: f64,
    /// Batch size of the teacher's inference over the transfer set.
    #[serde(default = "defaults::teacher_batch")]
    pub teacher_batch_size: usize,
    /// Number format of the teacher's inference here (transfer-set logits, dev evaluation):
    /// "f32", "bf16" or "int8". Left out of the resolved config when f32, so run ids stay.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub teacher_precision: Precision,
}

mod defaults {
    use super::*;
    pub fn seed() -> u64 {
        1
    }
    pub fn stages() -> Vec<Stage> {
        vec![Stage::Student]
    }
    pub fn out_dir() -> String {
        "runs".into()
    }
    pub fn train_file() -> String {
        "train.tsv".into()
    }
    pub fn dev_file() -> String {
        "dev.tsv".into()
    }
    pub fn min_count() -> usize {
        1
    }
    pub fn pair_features() -> PairFeatures {
        PairFeatures::Tang
    }
    pub fn max_seq_len() -> usize {
        128
    }
    pub fn yes() -> bool {
        true
    }
    pub fn warmup_ratio() -> f64 {
        0.1
    }
    pub fn weight_decay() -> f64 {
        0.01
    }
    pub fn one() -> f64 {
        1.0
    }
    pub fn eval_batch_size() -> usize {
        64
    }
    pub fn ngram_range() -> [usize; 2] {
        [2, 6]
    }
    pub fn mask_token() -> String {
        "[MASK]".into()
    }
    pub fn distill_loss() -> DistillLoss {
        DistillLoss::Mse
    }
    pub fn teacher_batch() -> usize {
        128
    }
}

/// A failed range check: (key, what is allowed).
type CheckError = (String, String);

fn range<T: PartialOrd + fmt::Display>(key: &str, v: T, lo: T, hi: T) -> Result<(), CheckError> {
    if v < lo || v > hi {
        return Err((key.into(), format!("{v} is out of range; allowed {lo} ..= {hi}")));
    }
    Ok(())
}

/// The training knobs that `[teacher]`, `[student]` and `[distill]` each carry, read from
/// whichever section a stage trains with, and range-checked in one place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainingSettings {
    pub optimizer: OptimizerName,
    pub lr: f64,
    pub batch_size: usize,
    pub epochs: usize,
    /// Evaluate on dev every N steps as well as after each epoch (0 = only after each epoch).
    pub eval_every: usize,
    /// Clip the global gradient norm to this value (0 = no clipping).
    pub max_grad_norm: f64,
}

impl TrainingSettings {
    pub fn new(optimizer: OptimizerName, lr: f64, batch_size: usize, epochs: usize, eval_every: usize, max_grad_norm: f64) -> Self {
        TrainingSettings { optimizer, lr, batch_size, epochs, eval_every, max_grad_norm }
    }

    /// Checks the knobs of `section`; `lr_note` says what is usual for its learning rate.
    fn check(&self, section: &str, max_lr: f64, lr_note: &str) -> Result<(), CheckError> {
        if !(self.lr > 0.0 && self.lr <= max_lr) {
            return Err((format!("{section}.lr"), format!("{} is out of range; allowed 0 < lr <= {max_lr}{lr_note}", self.lr)));
        }
        range(&format!("{section}.batch_size"), self.batch_size, 1, 65536)?;
        range(&format!("{section}.epochs"), self.epochs, 1, 10_000)?;
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            return Err((format!("{section}.max_grad_norm"), "must be >= 0 (0 = no clipping)".into()));
        }
        Ok(())
    }
}

fn check_dropout(key: &str, dropout: f64) -> Result<(), CheckError> {
    if !(0.0..1.0).contains(&dropout) {
        return Err((key.into(), format!("{dropout} is out of range; allowed 0 <= dropout < 1")));
    }
    Ok(())
}

impl StudentConfig {
    pub fn fc_size(&self) -> usize {
        self.fc_size.unwrap_or(self.hidden_size)
    }

    /// How the "student" stage trains.
    pub fn training(&self) -> TrainingSettings {
        TrainingSettings::new(self.optimizer, self.lr, self.batch_size, self.epochs, self.eval_every, self.max_grad_norm)
    }

    fn check(&self) -> Result<(), CheckError> {
        range("student.embedding_dim", self.embedding_dim, 1, 4096)?;
        range("student.hidden_size", self.hidden_size, 1, 4096)?;
        range("student.fc_size", self.fc_size(), 1, 4096)?;
        check_dropout("student.dropout", self.dropout)?;
        range("student.max_seq_len", self.max_seq_len, 1, 4096)?;
        self.training().check("student", 100.0, "")
    }
}

impl DistillConfig {
    /// How the "distill" stage trains the student.
    pub fn training(&self) -> TrainingSettings {
        TrainingSettings::new(self.optimizer, self.lr, self.batch_size, self.epochs, self.eval_every, self.max_grad_norm)
    }

    fn check(&self) -> Result<(), CheckError> {
        range("distill.teacher_batch_size", self.teacher_batch_size, 1, 65536)?;
        self.training().check("distill", 100.0, "")?;
        check_dropout("distill.dropout", self.dropout)?;
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(("distill.alpha".into(), format!("{} is out of range; allowed 0 ..= 1", self.alpha)));
        }
        if !(self.temperature > 0.0 && self.temperature <= 100.0) {
            return Err(("distill.temperature".into(), format!("{} is out of range; allowed 0 < temperature <= 100", self.temperature)));
        }
        Ok(())
    }
}

impl TeacherConfig {
    /// How the "teacher" stage trains (AdamW: Adam with this section's weight decay).
    pub fn training(&self) -> TrainingSettings {
        TrainingSettings::new(OptimizerName::Adam, self.lr, self.batch_size, self.epochs, self.eval_every, self.max_grad_norm)
    }

    fn check(&self) -> Result<(), CheckError> {
        range("teacher.max_seq_len", self.max_seq_len, 2, 4096)?;
        range("teacher.eval_batch_size", self.eval_batch_size, 1, 65536)?;
        self.training().check("teacher", 1.0, " (BERT fine-tuning uses 1e-5 ..= 1e-4)")?;
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return Err(("teacher.warmup_ratio".into(), format!("{} is out of range; allowed 0 <= warmup_ratio < 1", self.warmup_ratio)));
        }
        if !(0.0..1.0).contains(&self.weight_decay) {
            return Err(("teacher.weight_decay".into(), format!("{} is out of range; allowed 0 <= weight_decay < 1", self.weight_decay)));
        }
        Ok(())
    }
}

impl AugmentConfig {
    fn check(&self) -> Result<(), CheckError> {
        for (key, p) in [("augment.p_mask", self.p_mask), ("augment.p_pos", self.p_pos), ("augment.p_ng", self.p_ng)] {
            if !(0.0..=1.0).contains(&p) {
                return Err((key.into(), format!("{p} is out of range; allowed 0 ..= 1")));
            }
        }
        if self.p_mask + self.p_pos > 1.0 {
            return Err(("augment.p_pos".into(), "p_mask + p_pos must be at most 1 (one draw per word decides)".into()));
        }
        if self.ngram_range[0] < 1 || self.ngram_range[0] > self.ngram_range[1] {
            return Err(("augment.ngram_range".into(), format!("{:?}: give [lo, hi] with 1 <= lo <= hi", self.ngram_range)));
        }
        range("augment.n_iter", self.n_iter, 0, 1000)
    }
}

/// An error in an experiment file: which file, where, which key, and what to do.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Experiment {
    /// The seed the teacher stage trains with: `teacher.seed`, else `seed`.
    pub fn teacher_seed(&self) -> u64 {
        self.teacher.as_ref().and_then(|t| t.seed).unwrap_or(self.seed)
    }

    /// The seed the transfer set is drawn with: `augment.seed`, else `seed`.
    pub fn augment_seed(&self) -> u64 {
        self.augment.seed.unwrap_or(self.seed)
    }

    /// The task this experiment's data files are read as (a custom task's columns included).
    pub fn task(&self) -> crate::data::Task {
        crate::data::Task::new(self.task, self.data.columns.as_ref())
    }

    /// Reads, overrides and checks an experiment file.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Experiment, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: None,
            key: None,
            message: format!("cannot read the experiment file: {e}"),
        })?;
        Self::parse(&text, &path.display().to_string(), overrides)
    }

    /// Parses experiment TOML `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &str, overrides: &[String]) -> Result<Experiment, ConfigError> {
        let err = |line: Option<usize>, key: Option<String>, message: String| ConfigError {
            file: file.to_string(),
            line,
            key,
            message,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of_offset(text, s.start));
            err(line, None, format!("not valid TOML: {}", e.message()))
        })?;
        if table.contains_key("sweep") {
            return Err(err(
                line_of_key(text, "sweep"),
                Some("sweep".into()),
                "this file declares a grid; run it with `distill sweep FILE` (or drop [sweep] to run one experiment)".into(),
            ));
        }
        for item in overrides {
            apply_override(&mut table, item)
                .map_err(|m| err(None, None, format!("--set {item}: {m}")))?;
        }
        // An error in an overridden value is the override's, not the file's line.
        Self::from_table(table, text, file).map_err(|mut e| {
            let key = e.key.clone().unwrap_or_default();
            let key = key.split('[').next().unwrap_or_default();
            let from_override = overrides.iter().rev().find(|item| {
                item.split_once('=').is_some_and(|(path, _)| {
                    let path = path.trim();
                    key == path || key.starts_with(&format!("{path}.")) || path.starts_with(&format!("{key}."))
                })
            });
            if let Some(item) = from_override {
                e.line = None;
                e.message = format!("(from --set {item}) {}", e.message);
            }
            e
        })
    }

    /// Types and checks a parsed experiment table; `text` (the file as written) and `file`
    /// place errors.
    pub fn from_table(table: toml::Table, text: &str, file: &str) -> Result<Experiment, ConfigError> {
        let err = |line: Option<usize>, key: Option<String>, message: String| ConfigError {
            file: file.to_string(),
            line,
            key,
            message,
        };
        let experiment: Experiment =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                let key = (key != ".").then_some(key);
                let line = key.as_deref().and_then(|k| line_of_key(text, k));
                err(line, key, e.into_inner().to_string())
            })?;
        experiment.check().map_err(|(key, message)| {
            let line = line_of_key(text, &key);
            err(line, Some(key), message)
        })?;
        Ok(experiment)
    }

    /// Range checks that serde's types cannot express. Returns (key, what is allowed).
    fn check(&self) -> Result<(), CheckError> {
        if self.name.is_empty()
            || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err((
                "name".into(),
                format!("{:?} must be non-empty and use only letters, digits, '-', '_' and '.'", self.name),
            ));
        }
        if self.stages.is_empty() {
            return Err(("stages".into(), "list at least one stage: \"teacher\" or \"student\"".into()));
        }
        for (i, stage) in self.stages.iter().enumerate() {
            if self.stages[..i].contains(stage) {
                return Err(("stages".into(), format!("{:?} is listed twice; list each stage once", stage.name())));
            }
        }
        for stage in &self.stages {
            match stage {
                Stage::Distill if self.distill.is_none() => {
                    return Err((
                        "distill".into(),
                        "the \"distill\" stage needs a [distill] table (optimizer, lr, batch_size, epochs, dropout)".into(),
                    ))
                }
                Stage::Distill if self.student.is_none() => {
                    return Err(("student".into(), "the \"distill\" stage needs a [student] table (the architecture)".into()))
                }
                Stage::Distill
                    if self.distill.as_ref().is_some_and(|d| d.teacher.is_none()) && !self.stages.contains(&Stage::Teacher) =>
                {
                    return Err((
                        "distill.teacher".into(),
                        "name a fine-tuned teacher dir, or list \"teacher\" in stages so this experiment trains one".into(),
                    ))
                }
                Stage::Teacher if self.teacher.is_none() => {
                    return Err((
                        "teacher".into(),
                        "the \"teacher\" stage needs a [teacher] table (model, batch_size, lr, epochs)".into(),
                    ))
                }
                Stage::Student if self.student.is_none() => {
                    return Err((
                        "student".into(),
                        "the \"student\" stage needs a [student] table (embedding_dim, hidden_size, dropout, optimizer, lr, batch_size, epochs)".into(),
                    ))
                }
                _ => {}
            }
        }
        match (self.task, &self.data.columns) {
            (TaskName::Custom, None) => {
                return Err((
                    "data.columns".into(),
                    "task = \"custom\" needs a [data.columns] table naming text_a, label and labels".into(),
                ))
            }
            (TaskName::Custom, Some(c)) if c.labels.len() < 2 => {
                return Err(("data.columns.labels".into(), "list at least two label values".into()))
            }
            (TaskName::Custom, Some(c)) if c.labels.iter().enumerate().any(|(i, l)| c.labels[..i].contains(l)) => {
                return Err(("data.columns.labels".into(), format!("{:?}: each label value once (a class per value)", c.labels)))
            }
            (TaskName::Custom, Some(c)) if c.text_a == c.label || c.text_b.as_ref() == Some(&c.label) => {
                return Err((
                    "data.columns.label".into(),
                    format!("{:?} is also a text column: the model would read its answers; name the label column", c.label),
                ))
            }
            (TaskName::Custom, Some(_)) => {}
            (_, Some(_)) => {
                return Err((
                    "data.columns".into(),
                    "only task = \"custom\" takes [data.columns]; built-in tasks know their columns".into(),
                ))
            }
            (_, None) => {}
        }
        match self.vocab.kind {
            VocabKind::Wordpiece if self.vocab.tokenizer.is_none() => {
                return Err((
                    "vocab.tokenizer".into(),
                    "kind = \"wordpiece\" needs a BERT model dir or tokenizer file, e.g. \"${DISTILL_HOME}/models/all-MiniLM-L6-v2\"".into(),
                ))
            }
            _ => {}
        }
        range("vocab.min_count", self.vocab.min_count, 1, 1_000_000)?;
        let e = &self.embeddings;
        if e.from_teacher() && (e.path.is_some() || e.format.is_some()) {
            return Err((
                "embeddings.path".into(),
                "source = \"teacher\" makes the vectors from the teacher; drop embeddings.path and embeddings.format (or drop source)".into(),
            ));
        }
        if e.from_teacher() && self.vectors_teacher().is_none() {
            return Err((
                "embeddings.source".into(),
                "source = \"teacher\" needs a teacher: a [teacher] table with model, or distill.teacher".into(),
            ));
        }
        if !e.from_teacher() {
            for (key, set) in [("embeddings.layer", e.layer.is_some()), ("embeddings.pooling", e.pooling.is_some()), ("embeddings.weighting", e.weighting.is_some())] {
                if set {
                    return Err((key.into(), "applies to teacher-made vectors only; add embeddings.source = \"teacher\" or drop it".into()));
                }
            }
        }
        if self.embeddings.path.is_some() != self.embeddings.format.is_some() {
            return Err((
                "embeddings.format".into(),
                "give both embeddings.path and embeddings.format (\"glove\", \"word2vec_text\" or \"word2vec_binary\"), or neither".into(),
            ));
        }
        if let Some(t) = &self.teacher {
            t.check()?;
        }
        self.augment.check()?;
        if let Some(d) = &self.distill {
            d.check()?;
        }
        if let Some(s) = &self.student {
            s.check()?;
        }
        Ok(())
    }

    /// Checks, before anything trains, what the listed stages will read from disk: every
    /// path's `${VAR}` is set, the teacher and vectors and lexicon exist, and the teacher's
    /// `max_seq_len` fits its position table. Returns (key, what is wrong and what to do).
    pub fn check_inputs(&self) -> Result<(), CheckError> {
        let needs = |s: Stage| self.stages.contains(&s);
        let students = needs(Stage::Student) || needs(Stage::Distill);
        let distill_teacher = self.distill.as_ref().and_then(|d| d.teacher.as_deref());
        let paths = [
            ("out_dir", Some(self.out_dir.as_str())),
            ("data.dir", Some(self.data.dir.as_str())),
            ("vocab.tokenizer", self.vocab.tokenizer.as_deref()),
            ("embeddings.path", self.embeddings.path.as_deref()),
            ("teacher.model", self.teacher.as_ref().map(|t| t.model.as_str())),
            ("augment.pos_lexicon", self.augment.pos_lexicon.as_deref()),
            ("distill.teacher", distill_teacher),
        ];
        for (key, value) in paths {
            if let Some(var) = value.and_then(unset_variable) {
                return Err((key.into(), format!("{:?} uses ${{{var}}}, which is not set; export {var} or write the path out", value.unwrap_or_default())));
            }
        }
        // Every stage reads both splits.
        let data_dir = expand_path(&self.data.dir);
        if !data_dir.is_dir() {
            return Err((
                "data.dir".into(),
                format!("{}: no such data folder; put the task's {} and {} there, or point data.dir at them", data_dir.display(), self.data.train, self.data.dev),
            ));
        }
        for (key, file) in [("data.train", &self.data.train), ("data.dev", &self.data.dev)] {
            let path = data_dir.join(file);
            if !path.is_file() {
                return Err((key.into(), format!("{}: no such data file; put it there, or set {key} to the file's name in data.dir", path.display())));
            }
        }
        let exists = |key: &str, raw: Option<&str>, what: &str| -> Result<(), CheckError> {
            let hint = if key == "teacher.model" {
                "run scripts/setup for the default all-MiniLM-L6-v2 (the Chinese e5 teacher then needs `distill import-e5` and `distill trim-vocab`, see the README), or point teacher.model at an HF BERT dir"
            } else {
                "run scripts/setup for the defaults, or fix the path"
            };
            match raw.map(expand_path) {
                Some(path) if !path.exists() => Err((key.into(), format!("{}: no such {what}; {hint}", path.display()))),
                _ => Ok(()),
            }
        };
        let positions = |key: &str, dir: &str| -> Result<(), CheckError> {
            let config = expand_path(dir).join("config.json");
            let max_len = self.teacher.as_ref().map_or(128, |t| t.max_seq_len);
            let positions = std::fs::read_to_string(&config)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v.get("max_position_embeddings")?.as_u64());
            match positions {
                None => Err((key.into(), format!("{}: missing or not an HF BERT config; point {key} at an HF model dir", config.display()))),
                Some(p) if (max_len as u64) > p => {
                    Err(("teacher.max_seq_len".into(), format!("{max_len} exceeds the teacher's max_position_embeddings ({p}); lower it")))
                }
                Some(_) => Ok(()),
            }
        };
        if needs(Stage::Teacher) {
            let model = self.teacher.as_ref().map(|t| t.model.as_str());
            exists("teacher.model", model, "model dir")?;
            positions("teacher.model", model.unwrap_or_default())?;
        }
        if students {
            if self.vocab.kind == VocabKind::Wordpiece {
                exists("vocab.tokenizer", self.vocab.tokenizer.as_deref(), "tokenizer")?;
            }
            exists("embeddings.path", self.embeddings.path.as_deref(), "vectors file")?;
            match self.vectors_teacher() {
                Some(VectorsTeacher::Pretrained(model)) => exists("teacher.model", Some(&model), "model dir")?,
                Some(VectorsTeacher::Dir(dir)) => exists("distill.teacher", Some(&dir), "teacher dir")?,
                _ => {}
            }
        }
        if needs(Stage::Distill) {
            exists("augment.pos_lexicon", self.augment.pos_lexicon.as_deref(), "POS lexicon")?;
            if let Some(dir) = distill_teacher {
                exists("distill.teacher", Some(dir), "teacher dir")?;
                positions("distill.teacher", dir)?;
            }
        }
        Ok(())
    }

    /// The teacher `[embeddings] source = "teacher"` reads: `distill.teacher` if set, else the
    /// one the teacher stage fine-tunes when `teacher` is listed in `stages`, else the
    /// pretrained `teacher.model`. Known from the file alone, so a stage's key is too.
    pub fn vectors_teacher(&self) -> Option<VectorsTeacher> {
        if !self.embeddings.from_teacher() {
            return None;
        }
        if let Some(dir) = self.distill.as_ref().and_then(|d| d.teacher.clone()) {
            return Some(VectorsTeacher::Dir(dir));
        }
        let model = self.teacher.as_ref()?.model.clone();
        Some(if self.stages.contains(&Stage::Teacher) { VectorsTeacher::Trained } else { VectorsTeacher::Pretrained(model) })
    }

    /// The resolved config as TOML, as saved next to the results.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("an Experiment always serialises")
    }

    /// Hash of the resolved config; names the run directory. `out_dir` says where a run
    /// goes, not what it is, so it is left out: the same experiment has the same id anywhere.
    pub fn config_hash(&self) -> String {
        let what = Experiment { out_dir: String::new(), ..self.clone() };
        let digest = Sha256::digest(what.to_toml().as_bytes());
        digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
    }
}

/// Applies `a.b.c=value`; the value is read as TOML (`0.5`, `true`, `"x"`, `[1, 2]`), or as a bare string.
pub fn apply_override(table: &mut toml::Table, item: &str) -> Result<(), String> {
    let (path, raw) = item
        .split_once('=')
        .ok_or_else(|| "expected key.path=value".to_string())?;
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {}", raw.trim())) {
        Ok(mut t) => t.remove("v").expect("just parsed"),
        Err(_) => toml::Value::String(raw.trim().to_string()),
    };
    set_key(table, path, value)
}

/// Sets the value at dotted key `path` (`student.lr`), creating tables on the way.
pub fn set_key(table: &mut toml::Table, path: &str, value: toml::Value) -> Result<(), String> {
    let path = path.trim();
    if path.is_empty() {
        return Err("empty key".into());
    }
    let keys: Vec<&str> = path.split('.').collect();
    let mut node = table;
    for key in &keys[..keys.len() - 1] {
        let entry = node
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{key}` is a value, not a table"))?;
    }
    node.insert(keys[keys.len() - 1].to_string(), value);
    Ok(())
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Finds the line where a dotted key is written (`student.lr` → the `lr = …` line under `[student]`).
pub fn line_of_key(text: &str, key: &str) -> Option<usize> {
    // `stages[1]`: the line of `stages`.
    let key = key.split('[').next().unwrap_or(key);
    let parts: Vec<&str> = key.split('.').collect();
    let (leaf, tables) = parts.split_last()?;
    let wanted_table = tables.join(".");
    let mut current = String::new();
    let mut table_line = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            current = header.trim().trim_start_matches('[').to_string();
            if current == key {
                return Some(i + 1);
            }
            if current == wanted_table {
                table_line = Some(i + 1);
            }
            continue;
        }
        if current == wanted_table {
            let name = line.split('=').next().unwrap_or("").trim().trim_matches('"');
            if line.contains('=') && name == *leaf {
                return Some(i + 1);
            }
        }
    }
    table_line
}

/// Expands `${VAR}` (and `${DISTILL_HOME}`, which defaults to `~/.cache/distill`) and a leading `~`.
/// The first `${VAR}` in `raw` that is not set (`DISTILL_HOME` has a default).
fn unset_variable(raw: &str) -> Option<String> {
    let mut missing = None;
    substitute_variables(raw, |var| {
        let value = variable(var);
        if value.is_none() && missing.is_none() {
            missing = Some(var.to_string());
        }
        value.unwrap_or_default()
    });
    missing
}

/// The value of `${VAR}` in a path: `DISTILL_HOME` has a default, others come from the
/// environment.
fn variable(var: &str) -> Option<String> {
    if var == "DISTILL_HOME" {
        Some(distill_home().display().to_string())
    } else {
        std::env::var(var).ok()
    }
}

/// `raw` with each `${VAR}` replaced by `value(VAR)` (an unclosed `${` stays as written).
fn substitute_variables(raw: &str, mut value: impl FnMut(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                out.push_str(&value(&after[..end]));
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

pub fn expand_path(raw: &str) -> PathBuf {
    let out = substitute_variables(raw, |var| variable(var).unwrap_or_default());
    if let Some(stripped) = out.strip_prefix("~/") {
        if let Ok(home) = std::env::var("HOME") {
            return Path::new(&home).join(stripped);
        }
    }
    PathBuf::from(out)
}

/// The asset cache filled by `scripts/setup`.
pub fn distill_home() -> PathBuf {
    match std::env::var("DISTILL_HOME") {
        Ok(v) if !v.is_empty() => PathBuf::from(v),
        _ => {
            let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
            Path::new(&home).join(".cache/distill")
        }
    }
}
