//! Data augmentation for the transfer set (Tang et al. 2019, §3.2).
//!
//! Each example yields `n_iter` augmented copies. For every word, one uniform draw `X`
//! decides: `X < p_mask` → the mask token; `p_mask ≤ X < p_mask + p_pos` → another word
//! with the same part of speech, drawn from the training data (so frequent words come up
//! more often). Then, with probability `p_ng`, only a random n-gram of the result is kept
//! (n uniform in `ngram_range`). Pairs augment each side independently.
//!
//! Augmentation works on words: English texts split on whitespace (GLUE texts are
//! pre-tokenized), Chinese texts cut by jieba. The teacher reads the words joined back into
//! text; the student encodes the same words. Every copy is drawn from its own example's
//! words with an RNG seeded by (seed, example index), so the set is reproducible and
//! independent of thread scheduling. (PaddleNLP's current code builds every augmented row
//! from the last example's tokens — their issue #9816; the tests guard against that.)

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use jieba_rs::Jieba;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::config::AugmentConfig;
use crate::data::{Example, Language};

/// One row of the transfer set, as words.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransferExample {
    pub a: Vec<String>,
    pub b: Option<Vec<String>>,
    /// The gold label of the source example (used by the `ce` part of the loss).
    pub label: usize,
    /// Index of the source example in the training set.
    pub source: usize,
    /// False for the original example itself.
    pub augmented: bool,
    /// What changed it from the original (nothing for the original).
    pub fired: Fired,
}

/// The operators that fired on one augmented copy (of both sides, for pairs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Fired {
    /// Words turned into the mask token.
    pub masked: usize,
    /// Words replaced by a training word with the same part of speech.
    pub replaced: usize,
    /// The length n of the n-gram kept, when n-gram sampling cut the text.
    pub ngram: Option<usize>,
}

impl Fired {
    fn add(self, other: Fired) -> Fired {
        Fired { masked: self.masked + other.masked, replaced: self.replaced + other.replaced, ngram: self.ngram.or(other.ngram) }
    }

    /// `masked 1, replaced 2, 3-gram`, or `unchanged`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.masked > 0 {
            parts.push(format!("masked {}", self.masked));
        }
        if self.replaced > 0 {
            parts.push(format!("replaced {}", self.replaced));
        }
        if let Some(n) = self.ngram {
            parts.push(format!("{n}-gram"));
        }
        if parts.is_empty() {
            "unchanged".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Part-of-speech tags of words.
enum Tagger {
    /// English: a `word TAG` lexicon (Brill's, from `scripts/setup`), looked up in lower case.
    Lexicon(HashMap<String, String>),
    /// Chinese: jieba's tags.
    Jieba(Box<Jieba>),
    /// POS-guided replacement disabled.
    None,
}

pub struct Augmenter {
    cfg: AugmentConfig,
    language: Language,
    tagger: Tagger,
    jieba: Option<Box<Jieba>>,
    /// Training-data words by tag, one entry per occurrence (frequency-weighted draws).
    by_tag: HashMap<String, Vec<String>>,
}

impl Augmenter {
    /// `train` feeds the replacement candidates; `lexicon` is required for English when
    /// `p_pos > 0`.
    pub fn new(cfg: &AugmentConfig, language: Language, lexicon: Option<&Path>, train: &[Example]) -> Result<Augmenter> {
        let jieba = (language == Language::Chinese).then(|| Box::new(Jieba::new()));
        let tagger = if cfg.p_pos == 0.0 {
            Tagger::None
        } else {
            match language {
                Language::Chinese => Tagger::Jieba(Box::new(Jieba::new())),
                Language::English => {
                    let path = lexicon.context(
                        "augment.p_pos > 0 needs a POS lexicon for English: set augment.pos_lexicon \
                         (scripts/setup puts one at ${DISTILL_HOME}/lexicons/en-lexicon.txt), or set augment.p_pos = 0",
                    )?;
                    Tagger::Lexicon(read_lexicon(path)?)
                }
            }
        };
        let mut augmenter = Augmenter { cfg: cfg.clone(), language, tagger, jieba, by_tag: HashMap::new() };
        if !matches!(augmenter.tagger, Tagger::None) {
            let mut by_tag: HashMap<String, Vec<String>> = HashMap::new();
            for e in train {
                for text in std::iter::once(&e.text_a).chain(e.text_b.as_ref()) {
                    for (word, tag) in augmenter.tagged_words(text) {
                        if let Some(tag) = tag {
                            by_tag.entry(tag).or_default().push(word);
                        }
                    }
                }
            }
            augmenter.by_tag = by_tag;
        }
        Ok(augmenter)
    }

    /// The words of a text.
    pub fn words(&self, text: &str) -> Vec<String> {
        match &self.jieba {
            Some(jieba) => crate::tokenize::segment(jieba, text).map(str::to_string).collect(),
            None => text.split_whitespace().map(str::to_string).collect(),
        }
    }

    /// Words with their POS tags (`None`: unknown to the tagger, never replaced).
    fn tagged_words(&self, text: &str) -> Vec<(String, Option<String>)> {
        match &self.tagger {
            Tagger::Jieba(jieba) => jieba
                .tag(text, true)
                .into_iter()
                .filter(|t| !t.word.trim().is_empty())
                .map(|t| (t.word.to_string(), Some(t.tag.to_string())))
                .collect(),
            Tagger::Lexicon(lexicon) => self
                .words(text)
                .into_iter()
                .map(|w| {
                    let tag = lexicon.get(&w.to_lowercase()).cloned();
                    (w, tag)
                })
                .collect(),
            Tagger::None => self.words(text).into_iter().map(|w| (w, None)).collect(),
        }
    }

    /// Joins words back into text for the teacher (spaces for English, none for Chinese).
    pub fn join(&self, words: &[String]) -> String {
        join_words(words, self.language)
    }

    /// One augmented copy of a tagged word sequence, and which operators fired.
    pub fn augment(&self, words: &[(String, Option<String>)], rng: &mut StdRng) -> (Vec<String>, Fired) {
        let cfg = &self.cfg;
        let mut fired = Fired::default();
        let mut out: Vec<String> = words
            .iter()
            .map(|(word, tag)| {
                let x: f64 = rng.gen();
                if x < cfg.p_mask {
                    fired.masked += 1;
                    return cfg.mask_token.clone();
                }
                if x < cfg.p_mask + cfg.p_pos {
                    if let Some(candidates) = tag.as_ref().and_then(|t| self.by_tag.get(t)) {
                        fired.replaced += 1;
                        return candidates[rng.gen_range(0..candidates.len())].clone();
                    }
                }
                word.clone()
            })
            .collect();
        if cfg.p_ng > 0.0 && rng.gen::<f64>() < cfg.p_ng {
            let [lo, hi] = cfg.ngram_range;
            if out.len() > lo {
                let n = rng.gen_range(lo..=hi.min(out.len()));
                let start = rng.gen_range(0..=out.len() - n);
                out = out[start..start + n].to_vec();
                fired.ngram = Some(n);
            }
        }
        (out, fired)
    }

    /// The transfer set: each original example, then up to `n_iter` augmented copies of it
    /// (exact duplicates dropped if `drop_duplicates`). Reproducible for a given `seed`.
    pub fn transfer_set(&self, train: &[Example], seed: u64) -> Vec<TransferExample> {
        train
            .par_iter()
            .enumerate()
            .map(|(index, e)| {
                // One RNG per example: the result does not depend on thread scheduling.
                let mut rng = StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let a = self.tagged_words(&e.text_a);
                let b = e.text_b.as_ref().map(|t| self.tagged_words(t));
                let strip = |w: &[(String, Option<String>)]| w.iter().map(|(w, _)| w.clone()).collect::<Vec<_>>();
                let original = TransferExample {
                    a: strip(&a),
                    b: b.as_deref().map(strip),
                    label: e.label,
                    source: index,
                    augmented: false,
                    fired: Fired::default(),
                };
                let mut seen: HashSet<(Vec<String>, Option<Vec<String>>)> = HashSet::new();
                seen.insert((original.a.clone(), original.b.clone()));
                let mut rows = vec![original];
                for _ in 0..self.cfg.n_iter {
                    let (new_a, fired_a) = self.augment(&a, &mut rng);
                    let (new_b, fired) = match b.as_ref().map(|b| self.augment(b, &mut rng)) {
                        Some((words, fired_b)) => (Some(words), fired_a.add(fired_b)),
                        None => (None, fired_a),
                    };
                    if new_a.is_empty() {
                        continue;
                    }
                    if self.cfg.drop_duplicates && !seen.insert((new_a.clone(), new_b.clone())) {
                        continue;
                    }
                    rows.push(TransferExample { a: new_a, b: new_b, label: e.label, source: index, augmented: true, fired });
                }
                rows
            })
            .flatten()
            .collect()
    }
}

pub fn join_words(words: &[String], language: Language) -> String {
    match language {
        Language::English => words.join(" "),
        Language::Chinese => words.concat(),
    }
}

/// Reads a `word TAG` (or `word<TAB>TAG`) lexicon; `;;;` lines are comments.
pub fn read_lexicon(path: &Path) -> Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the POS lexicon (run scripts/setup, or set augment.pos_lexicon)", path.display()))?;
    let mut lexicon = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(";;;") {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some(word), Some(tag)) => {
                lexicon.entry(word.to_lowercase()).or_insert_with(|| tag.to_string());
            }
            _ => bail!("{}:{}: expected `word TAG`, found {line:?}", path.display(), i + 1),
        }
    }
    if lexicon.is_empty() {
        bail!("{}: the POS lexicon has no entries", path.display());
    }
    Ok(lexicon)
}
