//! Golden files written by the reference finalfusion implementations
//! (../shared/testdata/finalfusion): reading, byte-exact writing, corruption.

use std::path::PathBuf;

use vecfusion::storage::QuantizedStorage;
use vecfusion::{Embeddings, Error, OpenMode, Storage, Vocab};

fn testdata() -> PathBuf {
    match std::env::var_os("VECFUSION_SHARED") {
        Some(p) => PathBuf::from(p).join("testdata"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata"),
    }
}

fn ff(name: &str) -> PathBuf {
    testdata().join("finalfusion").join(name)
}

const ALL: &[&str] = &[
    "python/embeddings.fifu",
    "python/ff_buckets.fifu",
    "python/similarity.fifu",
    "python/pq.fifu",
    "python/simple_vocab.fifu",
    "rust/similarity.fifu",
    "rust/quantized.fifu",
];

fn rows(e: &Embeddings) -> Vec<Vec<f32>> {
    (0..e.storage.rows())
        .map(|i| {
            let mut v = vec![0f32; e.dims()];
            e.storage.row_into(i, &mut v);
            v
        })
        .collect()
}

#[test]
fn every_golden_file_reads_the_same_in_memory_and_mapped() {
    for name in ALL {
        let a = Embeddings::open(ff(name), OpenMode::Read).unwrap();
        let b = Embeddings::open(ff(name), OpenMode::Mmap).unwrap();
        assert_eq!(a.len(), b.len(), "{name}");
        assert_eq!(rows(&a), rows(&b), "{name}");
        assert_eq!(a.norms, b.norms, "{name}");
        assert_eq!(a.metadata, b.metadata, "{name}");
    }
}

#[test]
fn writing_back_gives_the_same_bytes() {
    // Files that list all their chunks in the header are rewritten byte for byte.
    for name in [
        "python/similarity.fifu",
        "python/pq.fifu",
        "python/simple_vocab.fifu",
        "rust/similarity.fifu",
        "rust/quantized.fifu",
    ] {
        let original = std::fs::read(ff(name)).unwrap();
        for mode in [OpenMode::Read, OpenMode::Mmap] {
            let e = Embeddings::open(ff(name), mode).unwrap();
            let mut out = Vec::new();
            e.write_to(&mut out).unwrap();
            assert!(out == original, "{name} ({mode:?}) not byte-identical");
        }
    }
}

#[test]
fn unlisted_norms_chunk_is_read_and_then_listed() {
    for name in ["python/embeddings.fifu", "python/ff_buckets.fifu"] {
        let original = std::fs::read(ff(name)).unwrap();
        let e = Embeddings::open(ff(name), OpenMode::Read).unwrap();
        assert!(e.norms.is_some(), "{name}");
        let mut out = Vec::new();
        e.write_to(&mut out).unwrap();
        // same chunks, one more id (NdNorms = 6) in the header list: 4 bytes longer
        assert_eq!(out.len(), original.len() + 4, "{name}");
        let n_chunks = u32::from_le_bytes(out[8..12].try_into().unwrap()) as usize;
        assert_eq!(u32::from_le_bytes(out[8 + 4 * n_chunks..12 + 4 * n_chunks].try_into().unwrap()), 6);
        let again = Embeddings::from_bytes(&out, None).unwrap();
        assert_eq!(again.norms, e.norms);
        assert_eq!(rows(&again), rows(&e));
    }
}

#[test]
fn embeddings_fifu_norms_and_rows() {
    let e = Embeddings::open(ff("python/embeddings.fifu"), OpenMode::Read).unwrap();
    let expected = [
        6.557_438_4_f32,
        8.831_760_4,
        6.164_413_9,
        9.165_151_6,
        7.483_315,
        7.211_102_5,
        7.483_315,
    ];
    let norms = e.norms.clone().unwrap();
    for (a, b) in norms.iter().zip(expected) {
        assert!((a - b).abs() < 1e-6);
    }
    // rows are the normalized vectors of embeddings.txt
    let text = std::fs::read_to_string(ff("python/embeddings.txt")).unwrap();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let word = parts.next().unwrap();
        let raw: Vec<f32> = parts.map(|x| x.parse().unwrap()).collect();
        let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
        let (v, n) = e.embedding_with_norm(word).unwrap();
        assert!((n - norm).abs() < 1e-5);
        for (a, b) in v.iter().zip(&raw) {
            assert!((a - b / norm).abs() < 1e-6);
        }
    }
    assert!(e.embedding("OOV").is_none());
}

#[test]
fn ff_buckets_subwords() {
    let e = Embeddings::open(ff("python/ff_buckets.fifu"), OpenMode::Read).unwrap();
    let Vocab::Subword(s) = &e.vocab else {
        panic!("expected a subword vocabulary")
    };
    assert_eq!((s.min_n, s.max_n), (3, 6));
    let mut idx: Vec<usize> = e.vocab.subword_indices("tübingen").iter().map(|i| i - 2).collect();
    idx.sort_unstable();
    idx.dedup();
    assert_eq!(
        idx,
        vec![
            12, 67, 72, 122, 166, 179, 195, 244, 248, 274, 298, 306, 323, 414, 547, 588, 646, 649, 705, 715, 759, 815,
            818, 855, 858, 1005
        ]
    );
    assert_eq!(s.indexer.index("<tü"), Some(818));
    assert!(e.embedding("").is_none());
    // unknown word: L2-normalized sum of its n-gram rows
    let mut sum = vec![0f32; e.dims()];
    for i in e.vocab.subword_indices("tübingen") {
        e.storage.add_row(i, &mut sum);
    }
    let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt();
    let (v, n) = e.embedding_with_norm("tübingen").unwrap();
    assert!((n - norm).abs() < 1e-6);
    for (a, b) in v.iter().zip(&sum) {
        assert!((a - b / norm).abs() < 1e-6);
    }
    let meta: toml::Table = e.metadata.as_deref().unwrap().parse().unwrap();
    assert_eq!(meta["common_config"]["dims"].as_integer(), Some(5));
}

#[test]
fn rust_similarity_fifu_holds_the_word2vec_matrix() {
    let e = Embeddings::open(ff("rust/similarity.fifu"), OpenMode::Read).unwrap();
    let bin = std::fs::read(ff("rust/similarity.bin")).unwrap();
    // word2vec binary: "41 100\n" then "word " + 100 f32 (+ optional newline)
    let nl = bin.iter().position(|&b| b == b'\n').unwrap();
    let mut pos = nl + 1;
    for i in 0..41 {
        while bin[pos] == b'\n' {
            pos += 1;
        }
        let sp = pos + bin[pos..].iter().position(|&b| b == b' ').unwrap();
        let word = std::str::from_utf8(&bin[pos..sp]).unwrap();
        pos = sp + 1;
        let v: Vec<f32> = bin[pos..pos + 400]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        pos += 400;
        assert_eq!(e.vocab.word(i), Some(word));
        assert_eq!(e.embedding(word).unwrap(), v);
    }
}

#[test]
fn pq_reconstructs_similarity() {
    let pq = Embeddings::open(ff("python/pq.fifu"), OpenMode::Mmap).unwrap();
    let dense = Embeddings::open(ff("python/similarity.fifu"), OpenMode::Read).unwrap();
    assert!(matches!(pq.storage, Storage::Quantized(_)));
    let (a, b) = (rows(&pq), rows(&dense));
    let max = a
        .iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(max < 0.06, "max abs error {max}");
}

#[test]
fn bare_quantized_chunk_reads_the_same_mapped() {
    let path = ff("rust/quantized_storage.bin");
    let bytes = std::fs::read(&path).unwrap();
    // the chunk with its header: u32 id = 4, u64 length, body
    let mut r = vecfusion::format::ByteReader::new(&bytes);
    assert_eq!(r.u32("id").unwrap(), 4);
    assert_eq!(r.u64("len").unwrap(), bytes.len() as u64 - 12);
    let q = QuantizedStorage::read_chunk(&mut r, None).unwrap();
    let mapped = vecfusion::embeddings::read_file(&path, OpenMode::Mmap).unwrap();
    let mut r2 = vecfusion::format::ByteReader::new(mapped.as_slice());
    r2.bytes(12, "header").unwrap();
    let qm = QuantizedStorage::read_chunk(&mut r2, Some(&mapped)).unwrap();
    assert_eq!((q.rows(), q.dims(), q.n_subquantizers(), q.n_centroids()), (100, 100, 10, 16));
    assert!(q.norms().is_some());
    let mut a = vec![0f32; 100];
    let mut b = vec![0f32; 100];
    for i in 0..100 {
        q.reconstruct_into(i, &mut a);
        qm.reconstruct_into(i, &mut b);
        assert_eq!(a, b);
    }
    let mut w = vecfusion::format::PosWriter::new(Vec::new());
    q.write_chunk(&mut w).unwrap();
    assert!(w.into_inner() == bytes, "bare chunk not rewritten byte for byte");
}

fn check_corrupt(bytes: &[u8]) {
    match Embeddings::from_bytes(bytes, None) {
        Ok(_) => {}
        Err(e) => assert!(e.is_format(), "{e}"),
    }
}

#[test]
fn every_truncation_is_a_format_error() {
    for name in ALL {
        let bytes = std::fs::read(ff(name)).unwrap();
        for len in 0..bytes.len() {
            let r = Embeddings::from_bytes(&bytes[..len], None);
            match r {
                Ok(_) => {
                    // Only dropping an optional trailing norms chunk whole may still parse.
                    assert!(len >= 12, "{name} truncated to {len} parsed");
                }
                Err(e) => assert!(e.is_format(), "{name}[..{len}]: {e}"),
            }
        }
    }
}

#[test]
fn byte_flips_never_panic() {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for name in ALL {
        let bytes = std::fs::read(ff(name)).unwrap();
        for _ in 0..300 {
            let mut b = bytes.clone();
            for _ in 0..(1 + next() % 4) {
                let i = (next() % b.len() as u64) as usize;
                b[i] ^= 1 << (next() % 8);
            }
            check_corrupt(&b);
        }
    }
}

#[test]
fn specific_corruptions_are_named() {
    let bytes = std::fs::read(ff("python/similarity.fifu")).unwrap();
    let mut b = bytes.clone();
    b[0] = b'X';
    assert!(matches!(Embeddings::from_bytes(&b, None), Err(Error::Magic { .. })));
    let mut b = bytes.clone();
    b[4] = 1;
    assert!(matches!(Embeddings::from_bytes(&b, None), Err(Error::Version { ref got, .. }) if got == "1"));
    let mut b = bytes.clone();
    b[12] = 77; // first listed chunk id
    assert!(matches!(Embeddings::from_bytes(&b, None), Err(Error::UnknownChunk(77))));
    // huge vocabulary length
    let vocab_chunk = 12 + 4 * 2;
    let mut b = bytes.clone();
    b[vocab_chunk + 12..vocab_chunk + 20].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(Embeddings::from_bytes(&b, None), Err(Error::Truncated { .. })));
    // huge chunk length
    let mut b = bytes.clone();
    b[vocab_chunk + 4..vocab_chunk + 12].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(matches!(Embeddings::from_bytes(&b, None), Err(Error::Truncated { .. })));
}

/// A floret vocabulary (no words; every string hashed with murmur3 into 1-4 rows),
/// written by hand as the format describes, read back and looked up.
#[test]
fn floret_vocabulary_reads_and_hashes() {
    use vecfusion::vocab::subword::murmur3_x64_128;
    let (n_buckets, n_hashes, seed) = (50u64, 2u32, 7u32);
    let dims = 3usize;
    let mut body = Vec::new();
    body.extend_from_slice(&4u32.to_le_bytes()); // min_n
    body.extend_from_slice(&5u32.to_le_bytes()); // max_n
    body.extend_from_slice(&n_buckets.to_le_bytes());
    body.extend_from_slice(&n_hashes.to_le_bytes());
    body.extend_from_slice(&seed.to_le_bytes());
    for s in ["<", ">"] {
        body.extend_from_slice(&(s.len() as u32).to_le_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    let mut file = Vec::new();
    file.extend_from_slice(b"FiFu");
    file.extend_from_slice(&0u32.to_le_bytes());
    file.extend_from_slice(&2u32.to_le_bytes());
    file.extend_from_slice(&9u32.to_le_bytes());
    file.extend_from_slice(&2u32.to_le_bytes());
    file.extend_from_slice(&9u32.to_le_bytes());
    file.extend_from_slice(&(body.len() as u64).to_le_bytes());
    file.extend_from_slice(&body);
    file.extend_from_slice(&2u32.to_le_bytes());
    let pad = 4 - (file.len() + 8 + 16) % 4;
    let matrix: Vec<f32> = (0..n_buckets as usize * dims).map(|i| i as f32).collect();
    file.extend_from_slice(&((16 + pad + matrix.len() * 4) as u64).to_le_bytes());
    file.extend_from_slice(&n_buckets.to_le_bytes());
    file.extend_from_slice(&(dims as u32).to_le_bytes());
    file.extend_from_slice(&10u32.to_le_bytes());
    file.extend(std::iter::repeat(0u8).take(pad));
    for x in &matrix {
        file.extend_from_slice(&x.to_le_bytes());
    }
    let emb = Embeddings::from_bytes(&file, None).unwrap();
    assert_eq!(emb.vocab.kind(), "FloretSubwordVocab");
    assert_eq!(emb.len(), 0);
    // expected rows: the whole bracketed word, then each n-gram, each hashed n_hashes times
    let rows_of = |s: &str| {
        let h = murmur3_x64_128(s.as_bytes(), seed);
        [h as u32, (h >> 32) as u32].map(|p| (u64::from(p) % n_buckets) as usize)
    };
    let mut want = rows_of("<abcd>").to_vec();
    for g in ["<abc", "<abcd", "abcd", "abcd>", "bcd>"] {
        want.extend(rows_of(g));
    }
    // `ngrams` lists what `subword_indices` hashes: the whole word first, whatever its length
    let listed = emb.vocab.ngrams("abcd");
    assert_eq!(listed[0], "<abcd>");
    let mut from_listed: Vec<usize> = listed.iter().flat_map(|g| rows_of(g)).collect();
    from_listed.sort_unstable();
    let mut got = emb.vocab.subword_indices("abcd");
    let mut want_sorted = want.clone();
    got.sort_unstable();
    assert_eq!(from_listed, got);
    got.sort_unstable();
    want_sorted.sort_unstable();
    assert_eq!(got, want_sorted);
    // embedding: normalized sum of those rows
    let mut sum = vec![0f32; dims];
    for r in &want {
        for (s, x) in sum.iter_mut().zip(&matrix[r * dims..(r + 1) * dims]) {
            *s += x;
        }
    }
    let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt();
    let (v, n) = emb.embedding_with_norm("abcd").unwrap();
    assert!((n - norm).abs() <= 1e-3 * norm);
    for (a, b) in v.iter().zip(&sum) {
        assert!((a - b / norm).abs() < 1e-5);
    }
    // written back byte for byte
    let mut out = Vec::new();
    emb.write_to(&mut out).unwrap();
    assert!(out == file);
}
