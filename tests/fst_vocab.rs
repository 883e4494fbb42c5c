//! fst vocabularies through the Rust API: the same answers as the standard vocabularies for
//! every indexer (explicit n-grams included), in memory and memory-mapped.

use proptest::prelude::*;
use vecfusion::embeddings::{Embeddings, OpenMode};
use vecfusion::storage::{ArrayStorage, Storage};
use vecfusion::vocab::{ExplicitNgrams, Indexer, SubwordVocab, Vocab, VocabFormat, WordList};

fn make(words: &[String], kind: u8, ngrams: &[(String, u64)]) -> Embeddings {
    let list = WordList::new(words.iter().map(String::as_str)).unwrap();
    let vocab = match kind {
        0 => Vocab::Simple(list),
        1 => Vocab::Subword(SubwordVocab { words: list, min_n: 2, max_n: 4, indexer: Indexer::Bucket { exponent: 4 }, fasttext_ngrams: false }),
        2 => Vocab::Subword(SubwordVocab { words: list, min_n: 3, max_n: 5, indexer: Indexer::FastText { buckets: 11 }, fasttext_ngrams: false }),
        _ => Vocab::Subword(SubwordVocab {
            words: list,
            min_n: 2,
            max_n: 3,
            indexer: Indexer::Explicit(ExplicitNgrams::new(ngrams.to_vec()).unwrap()),
            fasttext_ngrams: false,
        }),
    };
    let rows = vocab.rows() as usize;
    let data = (0..rows * 2).map(|x| x as f32).collect();
    Embeddings::new(None, vocab, Storage::Array(ArrayStorage::new(data, rows, 2).unwrap()), None).unwrap()
}

fn check(words: Vec<String>, kind: u8, ngrams: Vec<(String, u64)>, probes: Vec<String>) {
    let emb = make(&words, kind, &ngrams);
    let dir = tempfile::tempdir().unwrap();
    let (std_path, fst_path, back) = (dir.path().join("s"), dir.path().join("f"), dir.path().join("b"));
    emb.write_with_vocab(&std_path, None, Some(VocabFormat::Standard)).unwrap();
    emb.write_with_vocab(&fst_path, None, Some(VocabFormat::Fst)).unwrap();
    let std = Embeddings::open(&std_path, OpenMode::Read).unwrap();
    for mode in [OpenMode::Read, OpenMode::Mmap] {
        let f = Embeddings::open(&fst_path, mode).unwrap();
        assert!(f.vocab.is_fst());
        assert!(f.vocab.kind().starts_with("Fst"));
        assert_eq!(f.vocab.rows(), std.vocab.rows());
        let fw = f.vocab.words().unwrap();
        assert_eq!(fw.len(), words.len());
        // `get` keeps returning &str (interned), `iter` gives row order.
        for (i, w) in words.iter().enumerate() {
            assert_eq!(fw.get(i), Some(w.as_str()));
            assert_eq!(f.vocab.word(i), Some(w.as_str()));
            assert_eq!(fw.index(w), Some(i));
        }
        assert!(fw.iter().eq(words.iter().map(String::as_str)));
        assert_eq!(fw.get(words.len()), None);
        // Groups of words, as batch lookups resolve them (interleaved automaton walks), give
        // the rows of one-by-one lookups; groups of 16 and of 5 put each word in other company.
        let sw = std.vocab.words().unwrap();
        let all: Vec<&str> = words.iter().chain(&probes).map(String::as_str).collect();
        for size in [vecfusion::vocab::INDEX_GROUP, 5] {
            for g in all.chunks(size) {
                let mut rows = vec![None; g.len()];
                let mut seen = Vec::new();
                fw.index_group(g, &mut rows, |i| seen.push(i));
                let want: Vec<Option<usize>> = g.iter().map(|w| sw.index(w)).collect();
                assert_eq!(rows, want, "{g:?}");
                assert_eq!(seen, want.iter().flatten().copied().collect::<Vec<_>>());
            }
        }
        for p in words.iter().chain(&probes) {
            assert_eq!(f.vocab.idx(p), std.vocab.idx(p), "{p:?}");
            assert_eq!(f.vocab.try_idx(p).unwrap(), std.vocab.idx(p));
            assert_eq!(f.vocab.ngrams(p), std.vocab.ngrams(p));
            assert_eq!(f.vocab.subword_indices(p), std.vocab.subword_indices(p));
            assert_eq!(f.embedding(p), std.embedding(p));
        }
        f.write_with_vocab(&back, None, Some(VocabFormat::Standard)).unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&std_path).unwrap());
        // The vocabulary's own format is fst: `write` keeps it.
        f.write(&back).unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&fst_path).unwrap());
    }
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![".{0,8}", "[ab<>é]{1,5}", ".{100,400}"]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn fst_matches_standard(
        words in prop::collection::hash_set(word(), 1..40),
        kind in 0u8..4,
        grams in prop::collection::hash_map("[ab<>é]{2,3}", 0u64..50, 0..30),
        probes in prop::collection::vec(".{0,6}", 0..10),
    ) {
        let words: Vec<String> = words.into_iter().collect();
        let ngrams: Vec<(String, u64)> = grams.into_iter().collect();
        check(words, kind, ngrams, probes);
    }
}

#[test]
fn explicit_ngram_order_and_shared_indices_survive() {
    let words: Vec<String> = ["aab", "bé", "<a"].iter().map(|s| s.to_string()).collect();
    // Shared and sparse indices, file order not sorted.
    let ngrams = vec![("é>".to_string(), 90), ("<a".to_string(), 5), ("ab".to_string(), 90), ("b".to_string(), 7)];
    check(words, 3, ngrams, vec!["abé".into(), "".into(), "zz".into()]);
}

#[test]
fn floret_has_no_fst_form() {
    let dir = tempfile::tempdir().unwrap();
    let vocab = Vocab::Floret(vecfusion::vocab::FloretVocab {
        min_n: 3,
        max_n: 4,
        indexer: vecfusion::vocab::FloretIndexer { n_buckets: 4, n_hashes: 2, seed: 1 },
        bow: "<".into(),
        eow: ">".into(),
    });
    let emb = Embeddings::new(None, vocab, Storage::Array(ArrayStorage::new(vec![0.0; 8], 4, 2).unwrap()), None).unwrap();
    let err = emb.write_with_vocab(dir.path().join("x"), None, Some(VocabFormat::Fst)).unwrap_err();
    assert!(matches!(err, vecfusion::Error::Argument(_)), "{err}");
    assert!(!dir.path().join("x").exists());
}
