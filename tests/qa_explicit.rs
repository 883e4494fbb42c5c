//! ExplicitSubwordVocab chunks as finalfusion-python 0.7.1 writes them: the chunk length
//! leaves out the u64 index of every n-gram. The reference readers read the chunk by
//! position and accept such files; so does vecfusion, and it writes the correct length.

use std::path::PathBuf;

use vecfusion::{Embeddings, OpenMode};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qa/ff").join(name)
}

/// (offset of the length field, declared length, real length) of the vocab chunk.
fn explicit_chunk(data: &[u8]) -> (usize, u64, u64) {
    let u32_at = |p: usize| u32::from_le_bytes(data[p..p + 4].try_into().unwrap());
    let u64_at = |p: usize| u64::from_le_bytes(data[p..p + 8].try_into().unwrap());
    let pos = 12 + 4 * u32_at(8) as usize;
    assert_eq!(u32_at(pos), 8, "ExplicitSubwordVocab");
    let declared = u64_at(pos + 4);
    let body = pos + 12;
    let (n_words, n_ngrams) = (u64_at(body), u64_at(body + 8));
    let mut p = body + 24;
    for _ in 0..n_words {
        p += 4 + u32_at(p) as usize;
    }
    for _ in 0..n_ngrams {
        p += 4 + u32_at(p) as usize + 8;
    }
    (pos + 4, declared, (p - body) as u64)
}

#[test]
fn reads_finalfusion_python_explicit_vocab() {
    for name in ["explicit.fifu", "explicit_ft.fifu"] {
        let data = std::fs::read(fixture(name)).unwrap();
        let (at, declared, real) = explicit_chunk(&data);
        assert!(real > declared, "{name}: the fixture has finalfusion-python's short length");
        for mode in [OpenMode::Read, OpenMode::Mmap] {
            let e = Embeddings::open(fixture(name), mode).unwrap();
            assert_eq!(e.len(), 10);
            assert_eq!(e.vocab.word(2), Some("café"));
            assert!(e.embedding("caféé").is_some());
            assert!(e.vocab.word_index("caféé").is_none());
        }
        let e = Embeddings::from_bytes(&data, None).unwrap();
        let mut out = Vec::new();
        e.write_to(&mut out).unwrap();
        let mut fixed = data.clone();
        fixed[at..at + 8].copy_from_slice(&real.to_le_bytes());
        assert_eq!(out, fixed, "{name}: written with the real chunk length, otherwise the same bytes");
        // any other wrong length is still an error
        for bad in [declared - 1, declared + 1, real + 8] {
            let mut b = data.clone();
            b[at..at + 8].copy_from_slice(&bad.to_le_bytes());
            assert!(Embeddings::from_bytes(&b, None).is_err(), "{name}: length {bad}");
        }
    }
}
