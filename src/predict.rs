//! `distill predict`: labels and probabilities for new texts from a saved model dir alone
//! (a student stage dir `RUN_DIR/distill` or `RUN_DIR/student`, or an HF teacher dir).
//! Input: one text per line, or `text_a<TAB>text_b` for pair tasks. Output: CSV.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dfdx::prelude::*;
use rand::SeedableRng;

use crate::backend::{StudentBackend, TeacherBackend};
use crate::config::{DeviceName, TaskName};
use crate::data::Task;
use crate::encode::EncodedSet;
use crate::inference::teacher_logits;
use crate::loss::softmax;
use crate::metrics::argmax_rows;
use crate::models::bert::BertForSequenceClassification;
use crate::models::bilstm::BiLstmStudent;
use crate::ops::packed::Precision;
use crate::models::student_card::StudentCard;
use crate::report::ResultRow;
use crate::tokenize::{BertTokenizer, TextEncoder, Vocab};

#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// A run dir (uses its distilled student, else its student alone), a student stage dir,
    /// or a teacher dir (HF format).
    pub model: PathBuf,
    /// Read texts from this file instead of stdin.
    #[arg(long)]
    pub input: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// With a run dir: which student, `distill` or `student` (a teacher is used by giving
    /// its dir, `runs/teachers/TASK-HASH`).
    #[arg(long)]
    pub stage: Option<String>,
    /// Number format: f32, bf16 (AVX512-BF16) or int8 (VNNI, or AVX2 without it). A teacher's
    /// GEMMs, or a student's recurrent product (its input projections stay f32).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// Print the raw logits (`logit_LABEL` columns) instead of probabilities, e.g. to compare
    /// precisions with `scripts/compare_logits.py`.
    #[arg(long)]
    pub logits: bool,
}

/// A loaded model that maps texts to logits.
enum Predictor {
    Student { model: Box<StudentBackend>, encoder: TextEncoder, card: StudentCard },
    /// `pair`: the task of a teacher distill fine-tuned; `None` for another HF model dir.
    Teacher { model: Box<TeacherBackend>, tokenizer: BertTokenizer, labels: Vec<String>, pair: Option<bool> },
}

pub fn run(args: PredictArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let dir = model_dir(&args.model, args.stage.as_deref())?;
    let predictor = Predictor::load(&dir, args.precision)?;
    let input: Box<dyn BufRead> = match &args.input {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let source = args.input.as_ref().map_or("stdin".to_string(), |p| p.display().to_string());
    let mut texts: Vec<(String, Option<String>)> = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("{source}:{}: cannot read (not UTF-8?)", i + 1))?;
        if line.trim().is_empty() {
            // Kept, so that output row N is input line N.
            eprintln!("{source}:{}: empty line; predicted as an empty text", i + 1);
        }
        let text = match (predictor.is_pair(), line.split_once('\t')) {
            (Some(true) | None, Some((a, b))) => (a.to_string(), Some(b.to_string())),
            (Some(true), None) if line.trim().is_empty() => (String::new(), Some(String::new())),
            (Some(true), None) => bail!("{source}:{}: this is a sentence-pair model; write text_a<TAB>text_b", i + 1),
            // Most likely a TSV row (text, label): the label would be read as part of the text.
            (Some(false), Some(_)) => bail!(
                "{source}:{}: a tab in the line, but this is a single-sentence model; give one text per line (a TSV's text column alone, e.g. `cut -f1`)",
                i + 1
            ),
            (Some(false), None) | (None, None) => (line, None),
        };
        texts.push(text);
    }
    let labels = predictor.labels().to_vec();
    let mut out = csv::Writer::from_writer(std::io::stdout().lock());
    let mut header = vec!["label".to_string()];
    let prefix = if args.logits { "logit" } else { "p" };
    header.extend(labels.iter().map(|l| format!("{prefix}_{l}")));
    header.push("text".into());
    out.write_record(&header)?;
    for (batch, chunk) in texts.chunks(args.batch_size).enumerate() {
        let logits = predictor.logits(chunk, args.batch_size)?;
        if let Some(row) = logits.chunks_exact(labels.len()).position(|r| r.iter().any(|v| !v.is_finite())) {
            bail!(
                "{}: the model gives non-finite logits for input {} ({:?}); its weights hold NaN or infinity",
                dir.display(),
                batch * args.batch_size + row + 1,
                chunk[row].0.chars().take(60).collect::<String>()
            );
        }
        let classes = labels.len();
        for ((row, text), best) in logits.chunks_exact(classes).zip(chunk).zip(argmax_rows(&logits, classes)) {
            let mut record = vec![labels[best].clone()];
            let values = if args.logits { row.to_vec() } else { softmax(row, 1.0) };
            record.extend(values.into_iter().map(|p| format!("{p:.6}")));
            record.push(match &text.1 {
                Some(b) => format!("{}\t{b}", text.0),
                None => text.0.clone(),
            });
            out.write_record(&record)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Resolves a run dir to the model dir of one of its stages.
fn model_dir(path: &Path, stage: Option<&str>) -> Result<PathBuf> {
    let is_model = |p: &Path| p.join("model.safetensors").is_file();
    if let Some(stage) = stage {
        let dir = path.join(stage);
        if !is_model(&dir) {
            bail!("{}: no saved model for stage {stage:?} (expected {})", path.display(), dir.join("model.safetensors").display());
        }
        return Ok(dir);
    }
    if is_model(path) {
        return Ok(path.to_path_buf());
    }
    for stage in ["distill", "student"] {
        if is_model(&path.join(stage)) {
            return Ok(path.join(stage));
        }
    }
    bail!(
        "{}: no model.safetensors here or in its distill/ or student/ folder; give a run dir, a stage dir or a teacher dir",
        path.display()
    )
}

impl Predictor {
    fn load(dir: &Path, precision: Precision) -> Result<Predictor> {
        let cpu = Cpu::default();
        if dir.join("config.json").is_file() {
            let config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)
                .with_context(|| format!("{}: not JSON", dir.join("config.json").display()))?;
            let labels = teacher_labels(&config).with_context(|| format!("{}: no id2label", dir.join("config.json").display()))?;
            let max_len = config.get("max_position_embeddings").and_then(|v| v.as_u64()).unwrap_or(512).min(512) as usize;
            let model =
                BertForSequenceClassification::load(dir, labels.len(), &cpu, &mut rand::rngs::StdRng::seed_from_u64(0))?;
            let tokenizer = BertTokenizer::load(dir, max_len)?;
            let model = TeacherBackend::new(&model, DeviceName::Cpu, precision)?;
            let pair = fine_tuned_task(dir).map(|task| task.is_pair());
            return Ok(Predictor::Teacher { model: Box::new(model), tokenizer, labels, pair });
        }
        let (card, tokenizer) = StudentCard::load(dir)?;
        let mut model = BiLstmStudent::load(&dir.join("model.safetensors"), &cpu)?;
        model.set_inference_precision(precision);
        if let Some(note) = crate::ops::packed::missing_instruction_note(precision) {
            eprintln!("{note}");
        }
        let encoder = match card.vocab.as_str() {
            "wordpiece" => TextEncoder::wordpiece(tokenizer.as_deref().unwrap_or(dir))?,
            _ => {
                let text = std::fs::read_to_string(dir.join("vocab.txt"))
                    .with_context(|| format!("{}: cannot read", dir.join("vocab.txt").display()))?;
                TextEncoder::jieba_with_vocab(Vocab::from_tokens(text.lines().map(String::from).collect())?)
            }
        };
        if encoder.vocab().len() != model.shape.vocab_size {
            bail!(
                "{}: the vocab has {} tokens but the model was trained with {}",
                dir.display(),
                encoder.vocab().len(),
                model.shape.vocab_size
            );
        }
        Ok(Predictor::Student { model: Box::new(StudentBackend::for_inference(model, DeviceName::Cpu)?), encoder, card })
    }

    fn labels(&self) -> &[String] {
        match self {
            Predictor::Student { card, .. } => &card.labels,
            Predictor::Teacher { labels, .. } => labels,
        }
    }

    /// Whether lines must be pairs (students and the teachers distill fine-tuned know their
    /// task); `None`: another teacher, which reads a pair when the line has a tab.
    fn is_pair(&self) -> Option<bool> {
        match self {
            Predictor::Student { card, .. } => Some(card.pair),
            Predictor::Teacher { pair, .. } => *pair,
        }
    }

    fn logits(&self, texts: &[(String, Option<String>)], batch_size: usize) -> Result<Vec<f32>> {
        match self {
            Predictor::Student { model, encoder, card } => {
                let a: Vec<&str> = texts.iter().map(|t| t.0.as_str()).collect();
                let b: Option<Vec<&str>> = card.pair.then(|| texts.iter().map(|t| t.1.as_deref().unwrap_or("")).collect());
                let set = EncodedSet::from_texts(&a, b.as_deref(), vec![0; texts.len()], encoder, card.max_seq_len);
                let all: Vec<usize> = (0..set.len()).collect();
                let mut logits = Vec::new();
                for chunk in all.chunks(batch_size) {
                    logits.extend(model.predict_logits(&set.input(chunk, encoder.vocab().unk_id))?);
                }
                Ok(logits)
            }
            Predictor::Teacher { model, tokenizer, .. } => {
                let pairs: Vec<(&str, Option<&str>)> = texts.iter().map(|(a, b)| (a.as_str(), b.as_deref())).collect();
                teacher_logits(model, tokenizer, &pairs, batch_size)
            }
        }
    }
}

/// The task of a teacher dir distill fine-tuned (its result file names it); `None` for another
/// HF model dir, or a custom task, whose columns the dir does not record.
fn fine_tuned_task(dir: &Path) -> Option<Task> {
    let row: ResultRow = serde_json::from_slice(&std::fs::read(dir.join(crate::train::teacher::RESULT_FILE)).ok()?).ok()?;
    let name: TaskName = serde_json::from_value(serde_json::Value::String(row.task)).ok()?;
    (name != TaskName::Custom).then(|| Task::new(name, None))
}

/// Label names of an HF classification config, in id order.
fn teacher_labels(config: &serde_json::Value) -> Option<Vec<String>> {
    let map = config.get("id2label")?.as_object()?;
    let mut labels: Vec<(usize, String)> =
        map.iter().filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string()))).collect();
    labels.sort();
    Some(labels.into_iter().map(|(_, l)| l).collect())
}
