//! Augmentation: each operator's rate matches its probability on a large sample, every
//! augmented row derives from its own source (PaddleNLP issue #9816), reproducibility, and
//! Chinese words through jieba.

use std::io::Write;

use distill::augment::{Augmenter, TransferExample};
use distill::config::AugmentConfig;
use distill::data::{Example, Language};

/// 2,000 sentences of 20 distinct words each, drawn from 1,000 words.
fn corpus() -> Vec<Example> {
    (0..2000)
        .map(|i| Example {
            text_a: (0..20).map(|j| format!("w{}", (i * 7 + j * 13) % 1000)).collect::<Vec<_>>().join(" "),
            text_b: None,
            label: i % 2,
        })
        .collect()
}

/// A lexicon tagging every corpus word `NN`.
fn lexicon() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, ";;; a comment line").unwrap();
    for w in 0..1000 {
        writeln!(f, "w{w} NN").unwrap();
    }
    f
}

fn config(p_mask: f64, p_pos: f64, p_ng: f64) -> AugmentConfig {
    AugmentConfig { p_mask, p_pos, p_ng, n_iter: 5, drop_duplicates: false, ..AugmentConfig::default() }
}

fn augmented(rows: &[TransferExample]) -> impl Iterator<Item = &TransferExample> {
    rows.iter().filter(|r| r.augmented)
}

/// Rates are counted over 2,000 × 5 copies × 20 words = 200,000 draws; the standard error of a
/// rate near 0.2 is under 0.001, so a tolerance of 0.01 fails only on a real bug.
#[test]
fn each_operator_fires_at_its_probability() {
    let train = corpus();
    let lex = lexicon();

    let masker = Augmenter::new(&config(0.15, 0.0, 0.0), Language::English, None, &train).unwrap();
    let rows = masker.transfer_set(&train, 1);
    let words: Vec<&String> = augmented(&rows).flat_map(|r| r.a.iter()).collect();
    let rate = words.iter().filter(|w| w.as_str() == "[MASK]").count() as f64 / words.len() as f64;
    assert_eq!(words.len(), 2000 * 5 * 20);
    assert!((rate - 0.15).abs() < 0.01, "mask rate {rate}");
    // Each row says what fired on it (what `distill augment` prints).
    for r in augmented(&rows) {
        assert_eq!(r.fired.masked, r.a.iter().filter(|w| w.as_str() == "[MASK]").count());
        assert_eq!((r.fired.replaced, r.fired.ngram), (0, None));
    }

    let pos = Augmenter::new(&config(0.0, 0.2, 0.0), Language::English, Some(lex.path()), &train).unwrap();
    let rows = pos.transfer_set(&train, 1);
    let (mut changed, mut total) = (0usize, 0usize);
    for r in augmented(&rows) {
        let source = &rows.iter().find(|o| !o.augmented && o.source == r.source).unwrap().a;
        changed += r.a.iter().zip(source).filter(|(a, b)| a != b).count();
        total += r.a.len();
    }
    // A replacement can draw the same word back (chance 20/200,000 per draw here).
    let rate = changed as f64 / total as f64;
    assert!((rate - 0.2).abs() < 0.01, "POS replacement rate {rate}");
    let counted: usize = augmented(&rows).map(|r| r.fired.replaced).sum();
    assert!(counted >= changed && counted - changed < 50, "replacements counted {counted}, visible {changed}");

    let ngram = Augmenter::new(&AugmentConfig { ngram_range: [2, 6], ..config(0.0, 0.0, 0.25) }, Language::English, None, &train).unwrap();
    let rows = ngram.transfer_set(&train, 1);
    let copies: Vec<&TransferExample> = augmented(&rows).collect();
    let cut: Vec<usize> = copies.iter().filter(|r| r.a.len() < 20).map(|r| r.a.len()).collect();
    let rate = cut.len() as f64 / copies.len() as f64;
    assert!((rate - 0.25).abs() < 0.015, "n-gram rate {rate}");
    assert!(cut.iter().all(|&n| (2..=6).contains(&n)));
    assert!(copies.iter().all(|r| r.fired.ngram == (r.a.len() < 20).then_some(r.a.len())), "the n-gram length is recorded");
    assert!((2..=6).all(|n| cut.contains(&n)), "every n in the range occurs");
}

/// PaddleNLP #9816: every augmented row was built from the last example's tokens. Here each
/// copy must be a (masked) contiguous span of its own source.
#[test]
fn every_augmented_row_derives_from_its_own_source() {
    let train = corpus();
    let aug = Augmenter::new(&config(0.3, 0.0, 0.5), Language::English, None, &train).unwrap();
    let rows = aug.transfer_set(&train, 9);
    let mut checked = 0;
    for r in augmented(&rows) {
        let source: Vec<String> = train[r.source].text_a.split(' ').map(String::from).collect();
        let fits = (0..=source.len() - r.a.len())
            .any(|off| r.a.iter().enumerate().all(|(i, w)| w == "[MASK]" || *w == source[off + i]));
        assert!(fits, "row {:?} does not come from source {}: {:?}", r.a, r.source, source);
        assert_eq!(r.label, train[r.source].label);
        checked += 1;
    }
    assert!(checked >= 9000);
    // Originals come first for each source, once each, unchanged.
    let originals: Vec<&TransferExample> = rows.iter().filter(|r| !r.augmented).collect();
    assert_eq!(originals.len(), train.len());
    assert!(originals.iter().all(|o| o.a.join(" ") == train[o.source].text_a));
}

#[test]
fn seeded_reproducible_and_pairs_augment_both_sides() {
    let train: Vec<Example> = corpus()
        .into_iter()
        .take(200)
        .map(|e| Example { text_b: Some(e.text_a.split(' ').rev().collect::<Vec<_>>().join(" ")), ..e })
        .collect();
    let cfg = AugmentConfig { drop_duplicates: true, ..config(0.2, 0.0, 0.3) };
    let aug = Augmenter::new(&cfg, Language::English, None, &train).unwrap();
    let one = aug.transfer_set(&train, 5);
    assert_eq!(one, aug.transfer_set(&train, 5));
    assert_ne!(one, aug.transfer_set(&train, 6));
    let b_changed = augmented(&one).filter(|r| r.b.as_ref().unwrap().iter().any(|w| w == "[MASK]")).count();
    assert!(b_changed > 500, "the second text is augmented too ({b_changed})");
    // No exact duplicates within a source when dropping them.
    let mut seen = std::collections::HashSet::new();
    assert!(one.iter().all(|r| seen.insert((r.source, r.a.clone(), r.b.clone()))));
}

#[test]
fn english_pos_replacement_needs_a_lexicon() {
    let e = Augmenter::new(&config(0.0, 0.1, 0.0), Language::English, None, &corpus()).err().unwrap().to_string();
    assert!(e.contains("augment.pos_lexicon") && e.contains("p_pos"), "{e}");
    let mut bad = tempfile::NamedTempFile::new().unwrap();
    writeln!(bad, "good JJ\nlonely").unwrap();
    let e = Augmenter::new(&config(0.0, 0.1, 0.0), Language::English, Some(bad.path()), &corpus()).err().unwrap().to_string();
    assert!(e.contains(":2:") && e.contains("word TAG"), "{e}");
}

#[test]
fn chinese_augments_jieba_words_with_the_configured_mask() {
    let train = vec![
        Example { text_a: "这个宾馆的服务态度非常好，房间也很干净".into(), text_b: None, label: 1 },
        Example { text_a: "价格太贵了，而且早餐很难吃".into(), text_b: None, label: 0 },
    ];
    let cfg = AugmentConfig { mask_token: "[UNK]".into(), n_iter: 50, ..config(0.3, 0.3, 0.0) };
    let aug = Augmenter::new(&cfg, Language::Chinese, None, &train).unwrap();
    let rows = aug.transfer_set(&train, 3);
    let original = &rows[0];
    assert!(original.a.len() >= 6 && original.a.iter().all(|w| w.chars().count() < 6), "jieba words: {:?}", original.a);
    assert_eq!(aug.join(&original.a), train[0].text_a.replace(' ', ""));
    let copies: Vec<&TransferExample> = augmented(&rows).collect();
    assert!(copies.iter().any(|r| r.a.contains(&"[UNK]".to_string())));
    assert!(copies.iter().all(|r| !r.a.contains(&"[MASK]".to_string())));
    // POS replacement draws words seen in training with the same jieba tag.
    let train_words: std::collections::HashSet<String> = rows.iter().filter(|r| !r.augmented).flat_map(|r| r.a.clone()).collect();
    assert!(copies.iter().flat_map(|r| r.a.iter()).all(|w| w == "[UNK]" || train_words.contains(w)));
}
