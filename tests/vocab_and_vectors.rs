//! Vocab building (WordPiece from a model dir's vocab.txt, jieba from data) and word-vector
//! loading (GloVe, word2vec text and binary) with coverage.

use std::path::{Path, PathBuf};

use distill::config::VectorFormat;
use distill::embeddings::load_pretrained;
use distill::tokenize::TextEncoder;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn wordpiece_from_vocab_txt() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "vocab.txt", b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\nmovie\nis\ngood\n##ness\n.\n");
    let enc = TextEncoder::wordpiece(dir.path()).unwrap();
    assert_eq!(enc.vocab().len(), 11);
    assert_eq!(enc.vocab().pad_id, 0);
    assert_eq!(enc.vocab().unk_id, 1);
    // Lower-cased, split on punctuation, `goodness` → good ##ness, unknown word → [UNK].
    assert_eq!(enc.encode("The Movie is GOODNESS. wow"), vec![5, 6, 7, 8, 9, 10, 1]);
    let cov = enc.coverage(&[enc.encode("the movie is wow")]);
    assert_eq!((cov.tokens, cov.unknown), (4, 1));
}

#[test]
fn wordpiece_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let e = TextEncoder::wordpiece(dir.path()).err().unwrap().to_string();
    assert!(e.contains("neither tokenizer.json nor vocab.txt"), "{e}");
    let e = TextEncoder::wordpiece(&dir.path().join("missing")).err().unwrap().to_string();
    assert!(e.contains("scripts/setup"), "{e}");
}

#[test]
fn jieba_vocab_counts_words_with_min_count_and_max_size() {
    let texts = ["这个酒店很好", "这个酒店很差", "房间很好"];
    let enc = TextEncoder::jieba(&texts, 2, 0);
    let tokens = enc.vocab().tokens();
    assert_eq!(&tokens[..3], &["[PAD]", "[UNK]", "[MASK]"]);
    // jieba cuts 这个/酒店/很/好, 这个/酒店/很差, 房间/很/好: words seen twice are kept,
    // most frequent first, ties in code-point order; 很差 and 房间 (once each) are not.
    assert_eq!(&tokens[3..], &["好", "很", "这个", "酒店"]);
    let ids = enc.encode("这个房间很好");
    assert!(ids.contains(&enc.vocab().unk_id), "房间 is out of vocab: {ids:?}");
    let small = TextEncoder::jieba(&texts, 1, 5);
    assert_eq!(small.vocab().len(), 5);
}

#[test]
fn jieba_vocab_on_real_chnsenticorp_slice() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ChnSentiCorp/train.tsv");
    let task = distill::data::Task::new(distill::config::TaskName::Chnsenticorp, None);
    let opts = distill::data::LoadOptions { limit: 500, ..Default::default() };
    let ds = distill::data::load_split(&task, &path, opts).unwrap();
    let texts: Vec<&str> = ds.examples.iter().map(|e| e.text_a.as_str()).collect();
    let enc = TextEncoder::jieba(&texts, 1, 0);
    let encoded = enc.encode_all(&texts);
    assert_eq!(enc.coverage(&encoded).unknown, 0, "every training word is in a min_count=1 vocab");
    assert!(enc.vocab().len() > 3000, "{}", enc.vocab().len());
}

fn vocab() -> Vec<String> {
    ["[PAD]", "[UNK]", "the", "Movie", "##ing", "zzz"].iter().map(|s| s.to_string()).collect()
}

#[test]
fn glove_text_rows_and_coverage() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "g.txt", b"the 1 2 3\nmovie 4 5 6\ning 7 8 9\nother 0 0 0\n");
    let rows = load_pretrained(&path, VectorFormat::Glove, &vocab()).unwrap();
    assert_eq!(rows.dim, 3);
    assert_eq!(rows.rows[2].as_deref(), Some(&[1.0, 2.0, 3.0][..]));
    assert_eq!(rows.rows[3].as_deref(), Some(&[4.0, 5.0, 6.0][..]), "Movie falls back to movie");
    assert_eq!(rows.rows[4].as_deref(), Some(&[7.0, 8.0, 9.0][..]), "##ing falls back to ing");
    assert!(rows.rows[5].is_none());
    assert_eq!(rows.found(), 3);
    assert!((rows.coverage() - 0.5).abs() < 1e-12);
}

#[test]
fn word2vec_text_and_binary_agree() {
    let dir = tempfile::tempdir().unwrap();
    let text = write(dir.path(), "w.txt", b"2 2\nthe 0.5 -1\nzzz 2 3\n");
    let mut bin = b"2 2\n".to_vec();
    for (w, v) in [("the", [0.5f32, -1.0]), ("zzz", [2.0, 3.0])] {
        bin.extend_from_slice(w.as_bytes());
        bin.push(b' ');
        for x in v {
            bin.extend_from_slice(&x.to_le_bytes());
        }
        bin.push(b'\n');
    }
    let bin = write(dir.path(), "w.bin", &bin);
    let a = load_pretrained(&text, VectorFormat::Word2vecText, &vocab()).unwrap();
    let b = load_pretrained(&bin, VectorFormat::Word2vecBinary, &vocab()).unwrap();
    assert_eq!(a.rows, b.rows);
    assert_eq!(a.rows[2].as_deref(), Some(&[0.5, -1.0][..]));
    assert_eq!(a.found(), 2);
}

#[test]
fn bad_vector_files_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "g.txt", b"the 1 2 3\nmovie 4 5\n");
    let e = load_pretrained(&path, VectorFormat::Glove, &vocab()).err().unwrap().to_string();
    assert!(e.contains("g.txt:2") && e.contains("expected a word and 3 numbers"), "{e}");
    let path = write(dir.path(), "n.txt", b"the 1 x 3\n");
    let e = load_pretrained(&path, VectorFormat::Glove, &vocab()).err().unwrap().to_string();
    assert!(e.contains("n.txt:1") && e.contains("\"x\" is not a number"), "{e}");
    let path = write(dir.path(), "t.bin", b"3 2\nthe \x00\x00\x80\x3f");
    let e = load_pretrained(&path, VectorFormat::Word2vecBinary, &vocab()).err().unwrap().to_string();
    assert!(e.contains("t.bin") && e.contains("truncated"), "{e}");
    let e = load_pretrained(&path, VectorFormat::Word2vecText, &vocab()).err().unwrap().to_string();
    assert!(e.contains("t.bin") , "{e}");
}
