//! Tokenization and the student vocab.
//!
//! English: the WordPiece vocab of the teacher's model dir, through `tokenizers`, so
//! teacher and student share ids (and `[MASK]`). Chinese: `jieba-rs` words, with a vocab
//! counted from the training data (min count / max size), `[PAD]` = 0 and `[UNK]` = 1.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use jieba_rs::Jieba;
use rayon::prelude::*;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, Tokenizer, TruncationParams};

use crate::config::{expand_path, VocabConfig, VocabKind};

pub const PAD: &str = "[PAD]";
pub const UNK: &str = "[UNK]";
pub const MASK: &str = "[MASK]";
pub const CLS: &str = "[CLS]";
pub const SEP: &str = "[SEP]";

/// The student's token ↔ id table.
#[derive(Debug, Clone)]
pub struct Vocab {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    pub pad_id: u32,
    pub unk_id: u32,
}

impl Vocab {
    /// Builds a vocab from tokens in id order; it must contain `[PAD]` and `[UNK]`.
    pub fn from_tokens(tokens: Vec<String>) -> Result<Vocab> {
        let ids: HashMap<String, u32> =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let pad_id = *ids.get(PAD).with_context(|| format!("the vocab has no {PAD} token"))?;
        let unk_id = *ids.get(UNK).with_context(|| format!("the vocab has no {UNK} token"))?;
        Ok(Vocab { tokens, ids, pad_id, unk_id })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    pub fn id(&self, token: &str) -> u32 {
        self.ids.get(token).copied().unwrap_or(self.unk_id)
    }

    /// One token a line, in id order (the `vocab.txt` format).
    pub fn to_text(&self) -> String {
        let mut s = self.tokens.join("\n");
        s.push('\n');
        s
    }
}

/// Turns text into student token ids.
pub enum TextEncoder {
    WordPiece { tokenizer: Box<Tokenizer>, vocab: Vocab },
    Jieba { jieba: Box<Jieba>, vocab: Vocab },
}

/// How well a vocab covers a set of texts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Coverage {
    pub tokens: usize,
    pub unknown: usize,
}

impl Coverage {
    pub fn oov_rate(&self) -> f64 {
        self.unknown as f64 / self.tokens.max(1) as f64
    }
}

impl TextEncoder {
    /// Builds the encoder an experiment asks for; `train_texts` feed the jieba vocab.
    pub fn from_config(cfg: &VocabConfig, train_texts: &[&str]) -> Result<TextEncoder> {
        match cfg.kind {
            VocabKind::Wordpiece => {
                let raw = cfg.tokenizer.as_deref().context("vocab.tokenizer is required for wordpiece")?;
                Self::wordpiece(&expand_path(raw))
            }
            VocabKind::Jieba => Ok(Self::jieba(train_texts, cfg.min_count, cfg.max_size)),
        }
    }

    /// WordPiece from a BERT model dir (`tokenizer.json`, else `vocab.txt`) or either file.
    pub fn wordpiece(path: &Path) -> Result<TextEncoder> {
        let (mut tokenizer, file) = load_bert_tokenizer(path)?;
        // Shipped tokenizer.json files often pad/truncate to a fixed length; the student pads per batch.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let mut by_id: Vec<(u32, String)> =
            tokenizer.get_vocab(true).into_iter().map(|(t, i)| (i, t)).collect();
        by_id.sort();
        if by_id.iter().enumerate().any(|(i, (id, _))| *id as usize != i) {
            bail!("{}: the vocab's ids are not 0..N without gaps", file.display());
        }
        let vocab = Vocab::from_tokens(by_id.into_iter().map(|(_, t)| t).collect())
            .with_context(|| format!("{}: not a BERT WordPiece vocab", file.display()))?;
        Ok(TextEncoder::WordPiece { tokenizer: Box::new(tokenizer), vocab })
    }

    /// jieba words; the vocab keeps words seen at least `min_count` times, at most `max_size` (0 = all).
    pub fn jieba(train_texts: &[&str], min_count: usize, max_size: usize) -> TextEncoder {
        let jieba = Jieba::new();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for text in train_texts {
            for word in segment(&jieba, text) {
                *counts.entry(word.to_string()).or_default() += 1;
            }
        }
        let mut words: Vec<(String, usize)> =
            counts.into_iter().filter(|(_, c)| *c >= min_count).collect();
        // Most frequent first; ties alphabetically so the vocab is reproducible.
        words.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let specials = [PAD, UNK, MASK];
        let mut tokens: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
        let room = if max_size == 0 { usize::MAX } else { max_size.saturating_sub(specials.len()) };
        tokens.extend(
            words.into_iter().map(|(w, _)| w).filter(|w| !specials.contains(&w.as_str())).take(room),
        );
        let vocab = Vocab::from_tokens(tokens).expect("specials are present");
        TextEncoder::Jieba { jieba: Box::new(jieba), vocab }
    }

    /// Loads a saved jieba vocab (`vocab.txt` of a run dir).
    pub fn jieba_with_vocab(vocab: Vocab) -> TextEncoder {
        TextEncoder::Jieba { jieba: Box::new(Jieba::new()), vocab }
    }

    pub fn vocab(&self) -> &Vocab {
        match self {
            TextEncoder::WordPiece { vocab, .. } | TextEncoder::Jieba { vocab, .. } => vocab,
        }
    }

    /// Token ids of one text, without special tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self {
            TextEncoder::WordPiece { tokenizer, .. } => tokenizer
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default(),
            TextEncoder::Jieba { jieba, vocab } => {
                segment(jieba, text).map(|w| vocab.id(w)).collect()
            }
        }
    }

    /// Token ids of many texts, in parallel.
    pub fn encode_all(&self, texts: &[&str]) -> Vec<Vec<u32>> {
        texts.par_iter().map(|t| self.encode(t)).collect()
    }

    /// The share of tokens that map to `[UNK]`.
    pub fn coverage(&self, encoded: &[Vec<u32>]) -> Coverage {
        let unk = self.vocab().unk_id;
        let mut c = Coverage::default();
        for ids in encoded {
            c.tokens += ids.len();
            c.unknown += ids.iter().filter(|&&i| i == unk).count();
        }
        c
    }
}

/// A BERT tokenizer from a model dir (`tokenizer.json`, else `vocab.txt`), and the file it came from.
fn load_bert_tokenizer(path: &Path) -> Result<(Tokenizer, PathBuf)> {
    let file = resolve_tokenizer_file(path)?;
    let tokenizer = if file.file_name().is_some_and(|n| n == "tokenizer.json") {
        Tokenizer::from_file(&file).map_err(|e| anyhow::anyhow!("{}: cannot load the tokenizer: {e}", file.display()))?
    } else {
        let model = WordPiece::from_file(&file.display().to_string())
            .unk_token(UNK.into())
            .build()
            .map_err(|e| anyhow::anyhow!("{}: cannot read the WordPiece vocab: {e}", file.display()))?;
        let mut tokenizer = Tokenizer::new(model);
        tokenizer.with_normalizer(Some(BertNormalizer::default()));
        tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .with_context(|| format!("{}: the vocab has no {t} token", file.display()))
        };
        let (cls, sep) = (id(CLS)?, id(SEP)?);
        tokenizer.with_post_processor(Some(BertProcessing::new((SEP.into(), sep), (CLS.into(), cls))));
        // As in a tokenizer.json: `[MASK]` (written by augmentation) and the other specials stay whole.
        let specials: Vec<AddedToken> = [PAD, UNK, CLS, SEP, MASK]
            .into_iter()
            .filter(|t| tokenizer.token_to_id(t).is_some())
            .map(|t| AddedToken::from(t, true))
            .collect();
        tokenizer.add_special_tokens(&specials);
        tokenizer
    };
    Ok((tokenizer, file))
}

/// The teacher's input: `[CLS] a [SEP] (b [SEP])` with token types, cut to `max_len`
/// (longest side first for pairs), no padding (batches pad to their longest row).
pub struct BertTokenizer {
    tokenizer: Box<Tokenizer>,
    pub pad_id: u32,
    pub max_len: usize,
}

impl BertTokenizer {
    pub fn load(dir: &Path, max_len: usize) -> Result<BertTokenizer> {
        let (mut tokenizer, file) = load_bert_tokenizer(dir)?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_len, ..Default::default() }))
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        // BERT vocabs pad with [PAD]; SentencePiece ones (XLM-R, e5) with <pad>.
        let pad_id = tokenizer
            .token_to_id(PAD)
            .or_else(|| tokenizer.token_to_id("<pad>"))
            .with_context(|| format!("{}: the vocab has neither {PAD} nor <pad>", file.display()))?;
        Ok(BertTokenizer { tokenizer: Box::new(tokenizer), pad_id, max_len })
    }

    /// How this vocab spells a BERT special token: itself when the vocab has it, else the
    /// SentencePiece spelling (`[UNK]` → `<unk>`, `[MASK]` → `<mask>`) when that exists.
    /// The augmenter writes the mask token as a word; a teacher must read it as its own.
    pub fn special_spelling(&self, token: &str) -> String {
        if self.tokenizer.token_to_id(token).is_some() {
            return token.to_string();
        }
        let sentencepiece = match token {
            UNK => "<unk>",
            MASK => "<mask>",
            PAD => "<pad>",
            _ => return token.to_string(),
        };
        if self.tokenizer.token_to_id(sentencepiece).is_some() {
            sentencepiece.to_string()
        } else {
            token.to_string()
        }
    }

    /// The id of `token` as one entry of this vocab, if it is one.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// `(ids, token types)` of one text or pair.
    pub fn encode(&self, a: &str, b: Option<&str>) -> Result<(Vec<u32>, Vec<u32>)> {
        let encoding = match b {
            None => self.tokenizer.encode(a, true),
            Some(b) => self.tokenizer.encode((a, b), true),
        }
        .map_err(|e| anyhow::anyhow!("cannot tokenize {a:?}: {e}"))?;
        Ok((encoding.get_ids().to_vec(), encoding.get_type_ids().to_vec()))
    }

    /// Many texts or pairs, in parallel.
    pub fn encode_all(&self, texts: &[(&str, Option<&str>)]) -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
        texts.par_iter().map(|(a, b)| self.encode(a, *b)).collect()
    }
}

/// jieba words of a text, without whitespace-only tokens.
pub fn segment<'a>(jieba: &'a Jieba, text: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    jieba.cut(text, true).into_iter().map(|t| t.word).filter(|w| !w.trim().is_empty())
}

fn resolve_tokenizer_file(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.is_dir() {
        for name in ["tokenizer.json", "vocab.txt"] {
            let candidate = path.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        bail!("{}: the model dir has neither tokenizer.json nor vocab.txt", path.display());
    }
    bail!(
        "{}: no such tokenizer file or model dir (run scripts/setup to fetch the default assets, or set vocab.tokenizer)",
        path.display()
    )
}
