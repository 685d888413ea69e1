//! Splits as model input: student token ids ([`EncodedSet`]) and teacher WordPiece rows
//! ([`TeacherSet`]), with the batch builders of each.

use anyhow::{Context, Result};
use rayon::prelude::*;

use crate::augment::{join_words, TransferExample};
use crate::data::{Dataset, Language};
use crate::models::bert::BertInput;
use crate::models::bilstm::{StudentInput, TokenBatch};
use crate::tokenize::{BertTokenizer, TextEncoder};

/// A split turned into student token ids.
#[derive(Debug, Clone, Default)]
pub struct EncodedSet {
    pub a: Vec<Vec<u32>>,
    pub b: Option<Vec<Vec<u32>>>,
    pub labels: Vec<usize>,
}

impl EncodedSet {
    pub fn new(ds: &Dataset, encoder: &TextEncoder, max_len: usize) -> EncodedSet {
        let texts_a: Vec<&str> = ds.examples.iter().map(|e| e.text_a.as_str()).collect();
        let texts_b: Option<Vec<&str>> = ds
            .examples
            .iter()
            .any(|e| e.text_b.is_some())
            .then(|| ds.examples.iter().map(|e| e.text_b.as_deref().unwrap_or("")).collect());
        let labels = ds.examples.iter().map(|e| e.label).collect();
        Self::from_texts(&texts_a, texts_b.as_deref(), labels, encoder, max_len)
    }

    /// Texts (and second texts of pairs) as student ids, cut to `max_len` tokens.
    pub fn from_texts(a: &[&str], b: Option<&[&str]>, labels: Vec<usize>, encoder: &TextEncoder, max_len: usize) -> EncodedSet {
        let encode = |texts: &[&str]| -> Vec<Vec<u32>> {
            let mut ids = encoder.encode_all(texts);
            ids.iter_mut().for_each(|i| i.truncate(max_len));
            ids
        };
        EncodedSet { a: encode(a), b: b.map(encode), labels }
    }

    /// The transfer set as student ids: WordPiece reads the joined text (the mask token is
    /// one of its special tokens); jieba vocabularies look each word up directly, so the
    /// student sees exactly the words the augmenter produced.
    pub fn from_transfer(rows: &[TransferExample], encoder: &TextEncoder, language: Language, max_len: usize) -> EncodedSet {
        let encode = |words: &[String]| -> Vec<u32> {
            let mut ids = match encoder {
                TextEncoder::WordPiece { .. } => encoder.encode(&join_words(words, language)),
                TextEncoder::Jieba { vocab, .. } => words.iter().map(|w| vocab.id(w)).collect(),
            };
            ids.truncate(max_len);
            ids
        };
        let a = rows.par_iter().map(|r| encode(&r.a)).collect();
        let b = rows
            .iter()
            .any(|r| r.b.is_some())
            .then(|| rows.par_iter().map(|r| encode(r.b.as_deref().unwrap_or(&[]))).collect());
        EncodedSet { a, b, labels: rows.iter().map(|r| r.label).collect() }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The model input for the examples at `indices`; an empty text reads as `empty_id`.
    pub fn input(&self, indices: &[usize], empty_id: u32) -> StudentInput {
        let mut seqs: Vec<&[u32]> = indices.iter().map(|&i| self.a[i].as_slice()).collect();
        if let Some(b) = &self.b {
            seqs.extend(indices.iter().map(|&i| b[i].as_slice()));
        }
        StudentInput { tokens: TokenBatch::new(&seqs, empty_id), examples: indices.len() }
    }

    pub fn length(&self, i: usize) -> usize {
        self.a[i].len() + self.b.as_ref().map_or(0, |b| b[i].len())
    }
}

/// A split as teacher input: `(ids, token types)` per example, with gold labels.
pub struct TeacherSet {
    pub rows: Vec<(Vec<u32>, Vec<u32>)>,
    pub labels: Vec<usize>,
}

impl TeacherSet {
    pub fn new(ds: &Dataset, tokenizer: &BertTokenizer) -> Result<TeacherSet> {
        let texts: Vec<(&str, Option<&str>)> =
            ds.examples.iter().map(|e| (e.text_a.as_str(), e.text_b.as_deref())).collect();
        let rows = tokenizer.encode_all(&texts).with_context(|| format!("{}", ds.path.display()))?;
        Ok(TeacherSet { rows, labels: ds.examples.iter().map(|e| e.label).collect() })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn input(&self, indices: &[usize], pad_id: u32) -> BertInput {
        let rows: Vec<(Vec<u32>, Vec<u32>)> = indices.iter().map(|&i| self.rows[i].clone()).collect();
        BertInput::new(&rows, pad_id)
    }
}
