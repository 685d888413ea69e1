//! Pretrained word vectors: GloVe text, word2vec text and word2vec binary.
//!
//! Only rows for words in the student vocab are parsed and kept. A vocab token that is
//! missing is tried lower-cased and, for a WordPiece continuation (`##ing`), without `##`.
//! [`teacher`] makes vectors from the experiment's teacher instead.

pub mod teacher;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::config::VectorFormat;

/// Vectors found for a vocab: `rows[i]` is the vector of token `i`, if any.
pub struct PretrainedRows {
    pub dim: usize,
    pub rows: Vec<Option<Vec<f32>>>,
}

impl PretrainedRows {
    pub fn found(&self) -> usize {
        self.rows.iter().filter(|r| r.is_some()).count()
    }

    /// Share of vocab entries that got a pretrained vector.
    pub fn coverage(&self) -> f64 {
        self.found() as f64 / self.rows.len().max(1) as f64
    }

    /// Standard deviation of all values found, used to scale the random rows.
    pub fn value_std(&self) -> f32 {
        let (mut n, mut sum, mut sq) = (0f64, 0f64, 0f64);
        for row in self.rows.iter().flatten() {
            for &v in row {
                n += 1.0;
                sum += v as f64;
                sq += (v as f64) * (v as f64);
            }
        }
        if n == 0.0 {
            return 0.0;
        }
        let mean = sum / n;
        ((sq / n - mean * mean).max(0.0)).sqrt() as f32
    }
}

/// Reads the vectors of `vocab` tokens from `path`.
pub fn load_pretrained(path: &Path, format: VectorFormat, vocab: &[String]) -> Result<PretrainedRows> {
    // Each file word → the vocab rows it can fill (exact match first, then the fallbacks).
    let mut wanted: HashMap<String, Vec<(usize, u8)>> = HashMap::new();
    for (i, token) in vocab.iter().enumerate() {
        let mut keys = vec![token.clone()];
        let lower = token.to_lowercase();
        if lower != *token {
            keys.push(lower);
        }
        if let Some(stem) = token.strip_prefix("##") {
            if !stem.is_empty() {
                keys.push(stem.to_string());
            }
        }
        for (rank, key) in keys.into_iter().enumerate() {
            wanted.entry(key).or_default().push((i, rank as u8));
        }
    }
    let file = std::fs::File::open(path).with_context(|| {
        format!("{}: cannot open the word vectors (run scripts/setup, or fix embeddings.path)", path.display())
    })?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut rows: Vec<Option<Vec<f32>>> = vec![None; vocab.len()];
    let mut rank_of_row: Vec<u8> = vec![u8::MAX; vocab.len()];
    let mut keep = |word: &str, vector: &[f32]| {
        if let Some(targets) = wanted.get(word) {
            for &(row, rank) in targets {
                if rank < rank_of_row[row] {
                    rank_of_row[row] = rank;
                    rows[row] = Some(vector.to_vec());
                }
            }
        }
    };
    let dim = match format {
        VectorFormat::Glove | VectorFormat::Word2vecText => {
            read_text_vectors(path, &mut reader, format == VectorFormat::Word2vecText, |w| wanted_has(&wanted, w), &mut keep)?
        }
        VectorFormat::Word2vecBinary => read_word2vec_binary(path, &mut reader, &mut keep)?,
    };
    Ok(PretrainedRows { dim, rows })
}

fn wanted_has(wanted: &HashMap<String, Vec<(usize, u8)>>, word: &str) -> bool {
    wanted.contains_key(word)
}

fn read_text_vectors(
    path: &Path,
    reader: &mut impl BufRead,
    has_header: bool,
    is_wanted: impl Fn(&str) -> bool,
    keep: &mut impl FnMut(&str, &[f32]),
) -> Result<usize> {
    let mut dim = 0usize;
    let mut line = String::new();
    let mut line_no = 0u64;
    let mut values = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .with_context(|| format!("{}:{}: not valid UTF-8 text", path.display(), line_no + 1))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let text = line.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        if has_header && line_no == 1 {
            let parts: Vec<&str> = text.split_whitespace().collect();
            let parsed = (parts.len() == 2).then(|| parts[1].parse::<usize>().ok()).flatten();
            match parsed {
                Some(d) if d > 0 => dim = d,
                _ => bail!(
                    "{}:1: expected a word2vec header `COUNT DIM`, found {:?} (is this GloVe text? set embeddings.format = \"glove\")",
                    path.display(),
                    truncate(text)
                ),
            }
            continue;
        }
        let text = text.trim_end();
        let fields = text.split(' ').count();
        if dim == 0 {
            if fields < 2 {
                bail!("{}:{line_no}: expected `WORD v1 v2 ...`, found {:?}", path.display(), truncate(text));
            }
            dim = fields - 1;
        }
        if fields != dim + 1 {
            bail!(
                "{}:{line_no}: expected a word and {dim} numbers, found {} fields (a word with a space in it?)",
                path.display(),
                fields
            );
        }
        let mut parts = text.split(' ');
        let word = parts.next().expect("split yields at least one field");
        if !is_wanted(word) {
            continue;
        }
        values.clear();
        for p in parts {
            let v: f32 = p
                .parse()
                .with_context(|| format!("{}:{line_no}: {p:?} is not a number", path.display()))?;
            if !v.is_finite() {
                // NaN, inf, or beyond f32's range (1e39): it would poison the student silently.
                bail!("{}:{line_no}: {p:?} (word {word:?}) is not a finite f32; fix or drop that row", path.display());
            }
            values.push(v);
        }
        keep(word, &values);
    }
    if dim == 0 {
        bail!("{}: no vectors in the file", path.display());
    }
    Ok(dim)
}

/// The most dimensions a vectors file may declare.
const MAX_DIM: usize = 65_536;

fn read_word2vec_binary(
    path: &Path,
    reader: &mut impl BufRead,
    keep: &mut impl FnMut(&str, &[f32]),
) -> Result<usize> {
    let mut header = String::new();
    reader.read_line(&mut header).with_context(|| format!("{}: cannot read the header", path.display()))?;
    let parts: Vec<&str> = header.split_whitespace().collect();
    let (count, dim) = match parts.as_slice() {
        [c, d] => match (c.parse::<usize>(), d.parse::<usize>()) {
            // Bounded: DIM sizes a buffer, and no word vectors have more than a few thousand.
            (Ok(c), Ok(d)) if d > 0 && d <= MAX_DIM => (c, d),
            (Ok(_), Ok(d)) if d > MAX_DIM => bail!("{}: the header says {d} dimensions; at most {MAX_DIM} are read (a corrupt header?)", path.display()),
            _ => bail!("{}: expected a word2vec binary header `COUNT DIM`, found {:?}", path.display(), truncate(&header)),
        },
        _ => bail!("{}: expected a word2vec binary header `COUNT DIM`, found {:?}", path.display(), truncate(&header)),
    };
    let mut word = Vec::new();
    let mut raw = vec![0u8; dim * 4];
    let mut values = vec![0f32; dim];
    for i in 0..count {
        word.clear();
        loop {
            let mut byte = [0u8; 1];
            if reader.read(&mut byte)? == 0 {
                bail!("{}: the file ends after {i} of {count} vectors (truncated?)", path.display());
            }
            match byte[0] {
                b' ' => break,
                b'\n' if word.is_empty() => continue, // some writers end each vector with a newline
                b => word.push(b),
            }
        }
        reader.read_exact(&mut raw).with_context(|| {
            format!("{}: the file ends inside vector {} of {count} (truncated?)", path.display(), i + 1)
        })?;
        for (v, chunk) in values.iter_mut().zip(raw.chunks_exact(4)) {
            *v = f32::from_le_bytes(chunk.try_into().expect("4 bytes"));
        }
        let word = String::from_utf8_lossy(&word);
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            bail!("{}: vector {} of {count} (word {word:?}) holds {bad}, not a finite number; fix or drop it", path.display(), i + 1);
        }
        keep(&word, &values);
    }
    Ok(dim)
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}
