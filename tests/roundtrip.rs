//! Property round trips: whatever is written reads back the same, with every
//! matrix at a 4-aligned file offset (so it can be memory-mapped as f32).

use proptest::prelude::*;
use vecfusion::storage::{QuantizedStorage, U8Data};
use vecfusion::vocab::{ExplicitNgrams, Indexer, SubwordVocab};
use vecfusion::{ArrayStorage, Embeddings, OpenMode, Storage, Vocab, WordList};

fn unique(words: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    words.into_iter().filter(|w| seen.insert(w.clone())).collect()
}

fn vocab_strategy() -> impl Strategy<Value = (Vec<String>, u8, u32)> {
    (prop::collection::vec("\\PC{0,12}", 1..40), 0u8..4, 1u32..6)
}

fn build(words: &[String], kind: u8, buckets: u32) -> Vocab {
    let list = WordList::new(words.iter().map(String::as_str)).unwrap();
    match kind {
        0 => Vocab::Simple(list),
        1 => Vocab::Subword(SubwordVocab { words: list, min_n: 2, max_n: 4, indexer: Indexer::Bucket { exponent: buckets }, fasttext_ngrams: false }),
        2 => Vocab::Subword(SubwordVocab { words: list, min_n: 3, max_n: 5, indexer: Indexer::FastText { buckets: buckets * 3 }, fasttext_ngrams: false }),
        _ => {
            let pairs = (0..buckets as u64 * 2).map(|i| (format!("g{i}"), i / 2)).collect();
            Vocab::Subword(SubwordVocab {
                words: list,
                min_n: 1,
                max_n: 3,
                indexer: Indexer::Explicit(ExplicitNgrams::new(pairs).unwrap()),
                fasttext_ngrams: false,
            })
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn dense_roundtrip((words, kind, buckets) in vocab_strategy(), dims in 1usize..9, meta in prop::option::of("[a-z]{1,8}"), with_norms: bool) {
        let words = unique(words);
        let vocab = build(&words, kind, buckets);
        let rows = vocab.rows() as usize;
        let data: Vec<f32> = (0..rows * dims).map(|i| (i as f32).sin()).collect();
        let norms = with_norms.then(|| (0..words.len()).map(|i| i as f32 + 0.5).collect());
        let metadata = meta.map(|m| format!("name = \"{m}\"\n"));
        let emb = Embeddings::new(metadata, vocab, Storage::Array(ArrayStorage::new(data.clone(), rows, dims).unwrap()), norms).unwrap();
        let mut bytes = Vec::new();
        emb.write_to(&mut bytes).unwrap();
        let back = Embeddings::from_bytes(&bytes, None).unwrap();
        let Storage::Array(a) = &back.storage else { panic!() };
        prop_assert_eq!(a.as_slice(), &data[..]);
        prop_assert_eq!(&back.norms, &emb.norms);
        prop_assert_eq!(&back.metadata, &emb.metadata);
        prop_assert_eq!(back.vocab.chunk_id(), emb.vocab.chunk_id());
        for (i, w) in words.iter().enumerate() {
            prop_assert_eq!(back.vocab.word_index(w), Some(i));
            prop_assert_eq!(back.vocab.subword_indices(w), emb.vocab.subword_indices(w));
        }
        // the matrix sits at a 4-aligned offset: find it by its first value
        let mut again = Vec::new();
        back.write_to(&mut again).unwrap();
        prop_assert!(again == bytes);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.fifu");
        emb.write(&path).unwrap();
        let mapped = Embeddings::open(&path, OpenMode::Mmap).unwrap();
        let Storage::Array(m) = &mapped.storage else { panic!() };
        prop_assert!(m.is_mapped());
        prop_assert_eq!(m.as_slice().as_ptr() as usize % 4, 0);
        prop_assert_eq!(m.as_slice(), &data[..]);
    }

    #[test]
    fn quantized_roundtrip(rows in 1usize..30, m in 1usize..4, ds in 1usize..4, k in 1usize..8, proj: bool, with_norms: bool, seed: u64) {
        let dims = m * ds;
        let mut s = seed | 1;
        let mut next = move || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
        let projection = proj.then(|| (0..dims * dims).map(|_| (next() % 100) as f32 / 50.0 - 1.0).collect::<Vec<_>>());
        let centroids: Vec<f32> = (0..m * k * ds).map(|_| (next() % 100) as f32 / 10.0).collect();
        let norms = with_norms.then(|| (0..rows).map(|_| (next() % 10) as f32 + 1.0).collect::<Vec<_>>());
        let codes: Vec<u8> = (0..rows * m).map(|_| (next() % k as u64) as u8).collect();
        let q = QuantizedStorage::new(projection.clone(), centroids.clone(), norms.clone(), U8Data::Owned(codes.clone().into()), rows, dims, m, k).unwrap();
        let words: Vec<String> = (0..rows).map(|i| format!("w{i}")).collect();
        let emb = Embeddings::new(None, Vocab::Simple(WordList::new(words.iter().map(String::as_str)).unwrap()), Storage::Quantized(q), None).unwrap();
        let mut bytes = Vec::new();
        emb.write_to(&mut bytes).unwrap();
        let back = Embeddings::from_bytes(&bytes, None).unwrap();
        for i in 0..rows {
            // reference reconstruction straight from the format's definition
            let mut concat = vec![0f32; dims];
            for sub in 0..m {
                let c = codes[i * m + sub] as usize;
                concat[sub * ds..(sub + 1) * ds].copy_from_slice(&centroids[(sub * k + c) * ds..(sub * k + c + 1) * ds]);
            }
            let mut want = match &projection {
                Some(p) => (0..dims).map(|j| (0..dims).map(|t| concat[t] * p[j * dims + t]).sum::<f32>()).collect::<Vec<_>>(),
                None => concat,
            };
            if let Some(n) = &norms { for x in &mut want { *x *= n[i]; } }
            let mut got = vec![0f32; dims];
            back.storage.row_into(i, &mut got);
            for (a, b) in got.iter().zip(&want) {
                prop_assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{} vs {}", a, b);
            }
        }
    }
}

/// Norms are used in place from the file's buffer (memory map or read buffer), like the
/// matrix: opening reads none of them, and they equal the written ones.
#[test]
fn norms_are_used_in_place() {
    let words: Vec<String> = (0..1000).map(|i| format!("w{i}")).collect();
    let vocab = Vocab::Simple(WordList::new(words.iter().map(String::as_str)).unwrap());
    let dims = 3;
    let data: Vec<f32> = (0..words.len() * dims).map(|i| (i % 7) as f32 * 0.25 - 0.5).collect();
    let norms: Vec<f32> = (0..words.len()).map(|i| 1.0 + i as f32 / 8.0).collect();
    let storage = Storage::Array(ArrayStorage::new(data, words.len(), dims).unwrap());
    // the metadata's length varies the norms chunk's offset: padding keeps it 4-aligned
    for meta in [None, Some("a = 1".to_string()), Some("ab = 12".to_string())] {
        let emb = Embeddings::new(meta, vocab.clone(), storage.clone(), Some(norms.clone())).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.fifu");
        emb.write(&path).unwrap();
        for mode in [OpenMode::Mmap, OpenMode::Read] {
            let back = Embeddings::open(&path, mode).unwrap();
            let n = back.norms.as_ref().expect("norms");
            assert_eq!(&n[..], &norms[..]);
            assert!(matches!(n, vecfusion::storage::F32Data::Mapped { .. }), "{mode:?}: norms were copied");
            assert_eq!(back.word_norm(999), norms[999]);
        }
    }
}

/// A lookup large enough to use non-temporal stores gives the same rows as plain stores
/// and as single lookups.
#[test]
fn streaming_lookup_equals_plain_lookup() {
    let (n, dims) = (140_000usize, 64usize);
    let words: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
    let vocab = Vocab::Simple(WordList::new(words.iter().map(String::as_str)).unwrap());
    let data: Vec<f32> = (0..n * dims).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
    let emb = Embeddings::new(None, vocab, Storage::Array(ArrayStorage::new(data, n, dims).unwrap()), None).unwrap();
    let mut queries: Vec<String> = (0..n).rev().step_by(1).map(|i| format!("w{}", (i * 31) % n)).collect();
    queries[5] = "unknown".to_string();
    let (mut a, mut b) = (vec![1f32; n * dims], vec![2f32; n * dims]);
    let (mut fa, mut fb) = (vec![false; n], vec![false; n]);
    emb.lookup_into_with(&queries, &mut a, &mut fa, false);
    emb.lookup_into_with(&queries, &mut b, &mut fb, true);
    assert!(a == b && fa == fb);
    assert!(!fa[5] && a[5 * dims..6 * dims].iter().all(|&x| x == 0.0));
    for j in [0usize, 1, 777, n - 1] {
        assert_eq!(&a[j * dims..(j + 1) * dims], &emb.embedding(&queries[j]).unwrap()[..]);
    }
}
