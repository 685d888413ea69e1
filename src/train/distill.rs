//! The `distill` stage (the paper's "Distilled Bi-LSTM" row): augment the training set into
//! a transfer set, get the teacher's logits for it (once; cached by content hash), and train
//! the student on them with the loss `[distill]` names.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::student::{fit, FitSettings, StudentSetup};
use super::teacher::teacher_dir;
use super::RunContext;
use crate::augment::{join_words, Augmenter, TransferExample};
use crate::backend::{StudentBackend, TeacherBackend};
use crate::config::{expand_path, DeviceName, DistillConfig, Experiment};
use crate::data::{Example, Language};
use crate::encode::{EncodedSet, TeacherSet};
use crate::inference::{cached_teacher_logits, evaluate_student, evaluate_teacher, logits_cache_key, logits_cache_path};
use crate::loss::{LossSpec, Targets};
use crate::models::bert::BertForSequenceClassification;
use crate::report::ResultRow;
use crate::files::write_atomic;
use crate::tokenize::BertTokenizer;

pub fn train_distilled(ctx: &RunContext) -> Result<ResultRow> {
    let exp = &ctx.experiment;
    let cfg = exp.distill.as_ref().context("the distill stage needs a [distill] table")?;
    let student_cfg = exp.student.as_ref().context("the distill stage needs a [student] table")?;

    let teacher_path = distill_teacher_dir(exp, cfg);
    if !teacher_path.join("model.safetensors").is_file() {
        anyhow::bail!(
            "{}: no fine-tuned teacher there (distill.teacher); run the \"teacher\" stage first or point distill.teacher at a teacher dir",
            teacher_path.display()
        );
    }
    let teacher_max_len = exp.teacher.as_ref().map_or(128, |t| t.max_seq_len);
    let mut setup = StudentSetup::new(exp, cfg.dropout)?;
    let language = setup.task.language;

    let t0 = Instant::now();
    let transfer = transfer_set(exp, &setup.train.examples, language)?;
    eprintln!("{} in {:.1} s", transfer_summary(exp, &transfer), t0.elapsed().as_secs_f64());

    let texts = teacher_texts(&transfer, &teacher_path, teacher_max_len, &exp.augment.mask_token, language)?;
    let cache_dir = expand_path(&exp.out_dir).join("cache");
    let teacher_pass = cached_teacher_logits(
        &teacher_path,
        teacher_max_len,
        &texts,
        cfg.teacher_batch_size,
        setup.task.num_labels(),
        &cache_dir,
        exp.device,
        cfg.teacher_precision,
    )?;
    let logits = teacher_pass.logits;
    let train_set = EncodedSet::from_transfer(&transfer, &setup.encoder, language, student_cfg.max_seq_len);

    let settings = FitSettings { stage: "distill", training: cfg.training(), train_embeddings: student_cfg.train_embeddings };
    let loss = LossSpec { kind: cfg.loss, alpha: cfg.alpha as f32, temperature: cfg.temperature as f32 };
    let row = fit(ctx, &mut setup, &train_set, Targets::Teacher { logits: &logits, loss }, &settings)?;

    // Size and speed of teacher and student on the same dev set, side by side.
    let dev = Cpu::default();
    let mut teacher = BertForSequenceClassification::load(&teacher_path, setup.task.num_labels(), &dev, &mut StdRng::seed_from_u64(0))?;
    let tokenizer = BertTokenizer::load(&teacher_path, teacher_max_len)?;
    let teacher_eval = evaluate_teacher(
        &TeacherBackend::new(&teacher, DeviceName::Cpu, cfg.teacher_precision)?,
        &TeacherSet::new(&setup.dev, &tokenizer)?,
        tokenizer.pad_id,
        cfg.teacher_batch_size,
    )?;
    let student = StudentBackend::for_inference(setup.model.clone(), DeviceName::Cpu)?;
    let student_eval = evaluate_student(&student, &setup.dev_set, setup.encoder.vocab().unk_id, 256)?;
    let summary = DistillSummary {
        teacher_params: teacher.num_params(),
        student_params: row.params,
        params_ratio: teacher.num_params() as f64 / row.params as f64,
        teacher_dev_accuracy: teacher_eval.metrics.accuracy,
        student_dev_accuracy: row.dev_accuracy,
        teacher_dev_sentences_per_s: teacher_eval.sentences_per_s,
        student_dev_sentences_per_s: student_eval.sentences_per_s,
        speedup: student_eval.sentences_per_s / teacher_eval.sentences_per_s,
        transfer_rows: transfer.len(),
        n_iter: exp.augment.n_iter,
        teacher_precision: cfg.teacher_precision.name(),
        teacher_pass_rows_per_s: teacher_pass.rows_per_s,
    };
    eprintln!(
        "teacher {} parameters, {:.0} dev sentences/s ({}); student {} parameters, {:.0} dev sentences/s: {:.1}× smaller, {:.1}× faster",
        summary.teacher_params,
        summary.teacher_dev_sentences_per_s,
        summary.teacher_precision,
        summary.student_params,
        summary.student_dev_sentences_per_s,
        summary.params_ratio,
        summary.speedup
    );
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.serialize(&summary)?;
    write_atomic(&ctx.run_dir.join("distill/summary.csv"), &writer.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?;
    Ok(row)
}

/// The transfer set's rows as the teacher reads them: the augmenter's `mask` word in the
/// teacher vocab's own spelling (a SentencePiece teacher has `<unk>` where the config says
/// "[UNK]").
pub fn teacher_texts(transfer: &[TransferExample], teacher_dir: &Path, max_len: usize, mask: &str, language: Language) -> Result<Vec<(String, Option<String>)>> {
    let teacher_mask = BertTokenizer::load(teacher_dir, max_len)?.special_spelling(mask);
    let teacher_text = |words: &[String]| -> String {
        if teacher_mask == mask {
            return join_words(words, language);
        }
        let mapped: Vec<String> = words.iter().map(|w| if w == mask { teacher_mask.clone() } else { w.clone() }).collect();
        join_words(&mapped, language)
    };
    Ok(transfer.iter().map(|r| (teacher_text(&r.a), r.b.as_deref().map(teacher_text))).collect())
}

/// The fine-tuned teacher the distill stage reads: `distill.teacher`, else the teacher stage's dir.
fn distill_teacher_dir(exp: &Experiment, cfg: &DistillConfig) -> PathBuf {
    match &cfg.teacher {
        Some(path) => expand_path(path),
        None => teacher_dir(exp),
    }
}

/// Whether the teacher's logits over `exp`'s transfer set are cached already (the transfer
/// set is made again to know the key: seconds); `None` when the teacher is not trained yet
/// or the data cannot be read.
pub fn teacher_logits_cached(exp: &Experiment) -> Option<bool> {
    let cfg = exp.distill.as_ref()?;
    let teacher = distill_teacher_dir(exp, cfg);
    let max_len = exp.teacher.as_ref().map_or(128, |t| t.max_seq_len);
    let task = exp.task();
    let (train, _) = super::load_splits(exp, &task).ok()?;
    let transfer = transfer_set(exp, &train.examples, task.language).ok()?;
    let texts = teacher_texts(&transfer, &teacher, max_len, &exp.augment.mask_token, task.language).ok()?;
    let key = logits_cache_key(&teacher, max_len, &texts, cfg.teacher_precision).ok()?;
    Some(logits_cache_path(&expand_path(&exp.out_dir).join("cache"), &key).is_file())
}

/// The transfer set the distill stage trains on: the training examples and their augmented
/// copies, drawn with `augment.seed` (else `seed`).
pub fn transfer_set(exp: &Experiment, train: &[Example], language: Language) -> Result<Vec<TransferExample>> {
    let lexicon = exp.augment.pos_lexicon.as_deref().map(expand_path);
    let augmenter = Augmenter::new(&exp.augment, language, lexicon.as_deref(), train)?;
    Ok(augmenter.transfer_set(train, exp.augment_seed()))
}

fn transfer_summary(exp: &Experiment, transfer: &[TransferExample]) -> String {
    let augmented = transfer.iter().filter(|r| r.augmented).count();
    let a = &exp.augment;
    format!(
        "transfer set: {} rows = {} originals + {augmented} augmented (n_iter {}, p_mask {}, p_pos {}, p_ng {}, seed {})",
        transfer.len(),
        transfer.len() - augmented,
        a.n_iter,
        a.p_mask,
        a.p_pos,
        a.p_ng,
        exp.augment_seed()
    )
}

/// `distill augment`: the transfer set's summary, then `n` training examples drawn at
/// random, each with the rows made from it and the operators that fired, to look at before
/// paying for the teacher's pass.
pub fn preview_transfer_set(exp: &Experiment, n: usize) -> Result<String> {
    use rand::seq::index::sample;
    use std::fmt::Write;
    let task = exp.task();
    let (train, _) = super::load_splits(exp, &task)?;
    let transfer = transfer_set(exp, &train.examples, task.language)?;
    let text = |r: &TransferExample| {
        let a = join_words(&r.a, task.language);
        match &r.b {
            Some(b) => format!("{a}  |||  {}", join_words(b, task.language)),
            None => a,
        }
    };
    let sources = train.examples.len();
    let mut shown: Vec<usize> = sample(&mut StdRng::seed_from_u64(exp.augment_seed()), sources, n.min(sources)).into_vec();
    shown.sort_unstable();
    let mut out = format!("{}; {} of {sources} sources shown\n", transfer_summary(exp, &transfer), shown.len());
    for source in shown {
        let rows: Vec<&TransferExample> = transfer.iter().filter(|r| r.source == source).collect();
        let label = &task.labels[train.examples[source].label];
        writeln!(out, "\n#{source} ({label}): {}", rows.first().map(|r| text(r)).unwrap_or_default())?;
        for row in rows.iter().filter(|r| r.augmented) {
            writeln!(out, "    {:<30} {}", format!("{}:", row.fired.describe()), text(row))?;
        }
    }
    Ok(out)
}

/// `RUN_DIR/distill/summary.csv`: teacher and student side by side.
#[derive(Debug, serde::Serialize)]
struct DistillSummary {
    teacher_params: usize,
    student_params: usize,
    params_ratio: f64,
    teacher_dev_accuracy: f64,
    student_dev_accuracy: f64,
    teacher_dev_sentences_per_s: f64,
    student_dev_sentences_per_s: f64,
    speedup: f64,
    transfer_rows: usize,
    n_iter: usize,
    /// The number format of the teacher's transfer-set pass and of its dev figures here.
    teacher_precision: &'static str,
    /// Rows/s of the transfer set's teacher pass (when it ran; from the cache file's record).
    teacher_pass_rows_per_s: Option<f64>,
}
