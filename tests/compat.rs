//! Golden files of the reference implementations: word2vec, text and fastText.

mod common;

use std::path::PathBuf;

use vecfusion::compat::text::{read_text, write_text, Header};
use vecfusion::compat::word2vec::{read_word2vec_binary, write_word2vec_binary};
use vecfusion::compat::{fasttext, Decode, ReadOptions};
use vecfusion::{Embeddings, OpenMode};

fn golden(rel: &str) -> PathBuf {
    let shared = std::env::var_os("VECFUSION_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("shared"));
    shared.join("testdata").join(rel)
}

const RAW: ReadOptions = ReadOptions {
    decode: Decode::Strict,
    limit: None,
    normalize: false,
};

#[test]
fn word2vec_and_text_round_trips_are_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let bin = golden("finalfusion/rust/similarity.bin");
    let emb = read_word2vec_binary(&bin, &RAW).unwrap();
    let out = dir.path().join("s.bin");
    write_word2vec_binary(&emb, &out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&bin).unwrap());

    for (name, header) in [("similarity.txt", true), ("similarity.nodims", false)] {
        let src = golden(&format!("finalfusion/rust/{name}"));
        let emb = read_text(&src, if header { Header::Yes } else { Header::No }, &RAW).unwrap();
        let out = dir.path().join(name);
        write_text(&emb, &out, header).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&src).unwrap(), "{name}");
    }

    let fifu = Embeddings::open(golden("finalfusion/rust/similarity.fifu"), OpenMode::Read).unwrap();
    assert_eq!(fifu.storage.rows(), emb.storage.rows());
    for i in 0..fifu.len() {
        let mut a = vec![0f32; 100];
        let mut b = vec![0f32; 100];
        fifu.storage.row_into(i, &mut a);
        emb.storage.row_into(i, &mut b);
        assert_eq!(a, b);
    }
}

#[test]
fn strict_utf8_fails_lossy_replaces() {
    for (name, header) in [("utf8-incomplete.txt", Header::No), ("utf8-incomplete.dims", Header::Detect)] {
        let p = golden(&format!("finalfusion/rust/{name}"));
        let e = read_text(&p, header, &ReadOptions::default()).unwrap_err();
        assert!(e.is_format() && e.to_string().contains("UTF-8"), "{e}");
        let lossy = ReadOptions {
            decode: Decode::Lossy,
            ..ReadOptions::default()
        };
        let emb = read_text(&p, header, &lossy).unwrap();
        assert_eq!(emb.vocab.word(1), Some("zee\u{fffd}n"));
    }
    let p = golden("finalfusion/rust/utf8-incomplete.bin");
    let e = read_word2vec_binary(&p, &ReadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("record 2"), "{e}");
}

#[test]
fn fasttext_reference_neighbours() {
    let emb = fasttext::read_fasttext(&golden("finalfusion/rust/fasttext.bin"), false, true).unwrap();
    assert_eq!((emb.len(), emb.dims(), emb.vocab.rows()), (157, 50, 257));
    let q = emb.embedding("über").unwrap();
    let mut sims: Vec<(f32, &str)> = (0..emb.len())
        .map(|i| {
            let mut r = vec![0f32; 50];
            emb.storage.row_into(i, &mut r);
            (r.iter().zip(&q).map(|(a, b)| a * b).sum(), emb.vocab.word(i).unwrap())
        })
        .filter(|(_, w)| *w != "über")
        .collect();
    sims.sort_by(|a, b| b.0.total_cmp(&a.0));
    let top: Vec<&str> = sims.iter().take(3).map(|s| s.1).collect();
    assert_eq!(top, ["auf", "vor", "durch"]);
    assert!((sims[0].0 - 0.568513).abs() < 1e-5);
}

/// Deterministic pseudo-random floats (xorshift), with some exact zeros and wide exponents.
fn floats(n: usize, seed: u64) -> Vec<f32> {
    let mut next = common::xorshift(seed);
    (0..n)
        .map(|i| {
            let s = next();
            if i % 97 == 0 {
                0.0
            } else {
                let m = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                m * 2f32.powi(((s >> 8) % 16) as i32 - 8)
            }
        })
        .collect()
}

/// The straightforward per-row normalization the readers must match bit for bit.
fn normalized(row: &[f32]) -> (Vec<f32>, f32) {
    let mut r = row.to_vec();
    let n = vecfusion::embeddings::l2_normalize(&mut r);
    (r, n)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn word2vec_reader_matches_plain_parse_bit_for_bit() {
    // more rows than one part of the reader, odd dims, a zero row, whitespace variants
    let (rows, dims) = (1000, 7);
    let mut vals = floats(rows * dims, 7);
    vals[5 * dims..6 * dims].iter_mut().for_each(|x| *x = 0.0);
    let mut file = format!("{rows} {dims}\n").into_bytes();
    for i in 0..rows {
        if i % 3 == 0 {
            file.push(b'\n');
        }
        file.extend_from_slice(format!("w{i}").as_bytes());
        file.push(b' ');
        for x in &vals[i * dims..(i + 1) * dims] {
            file.extend_from_slice(&x.to_le_bytes());
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.bin");
    std::fs::write(&p, &file).unwrap();

    let raw = read_word2vec_binary(&p, &RAW).unwrap();
    assert_eq!(bits(array(&raw).as_slice()), bits(&vals));
    assert!(raw.norms.is_none());

    for limit in [None, Some(300), Some(256), Some(1)] {
        let opts = ReadOptions {
            limit,
            ..ReadOptions::default()
        };
        let emb = read_word2vec_binary(&p, &opts).unwrap();
        let n = limit.unwrap_or(rows);
        assert_eq!(emb.len(), n);
        let norms = emb.norms.as_ref().unwrap();
        for i in 0..n {
            let (want, norm) = normalized(&vals[i * dims..(i + 1) * dims]);
            assert_eq!(bits(array(&emb).row(i)), bits(&want), "row {i}");
            assert_eq!(norms[i].to_bits(), norm.to_bits(), "norm {i}");
            assert_eq!(emb.vocab.word(i), Some(format!("w{i}").as_str()));
        }
    }

    // truncated inside a vector, and inside a word: format errors naming the record
    for (cut, inside) in [(file.len() - 3, "vector"), (file.len() - dims * 4 - 2, "word")] {
        std::fs::write(&p, &file[..cut]).unwrap();
        let e = read_word2vec_binary(&p, &ReadOptions::default()).unwrap_err();
        assert!(e.is_format(), "{e}");
        assert!(e.to_string().contains(&format!("record {rows} of {rows}")), "{e}");
        assert!(e.to_string().contains(inside), "{e}");
    }
}

fn array(e: &Embeddings) -> &vecfusion::ArrayStorage {
    match &e.storage {
        vecfusion::Storage::Array(a) => a,
        _ => panic!("not a dense matrix"),
    }
}

/// A fastText skipgram `.bin` written field by field (no labels, not quantized).
fn fasttext_file(words: &[String], dims: usize, bucket: usize, minn: i32, maxn: i32, matrix: &[f32]) -> Vec<u8> {
    let mut b = Vec::new();
    let i32s = |b: &mut Vec<u8>, v: &[i32]| v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
    i32s(&mut b, &[793_712_314, 12]);
    // dim ws epoch minCount neg wordNgrams loss model bucket minn maxn lrUpdateRate
    i32s(&mut b, &[dims as i32, 5, 5, 1, 5, 1, 2, 2, bucket as i32, minn, maxn, 100]);
    b.extend_from_slice(&1e-4f64.to_le_bytes());
    i32s(&mut b, &[words.len() as i32, words.len() as i32, 0]);
    b.extend_from_slice(&(words.len() as i64).to_le_bytes());
    b.extend_from_slice(&(-1i64).to_le_bytes());
    for w in words {
        b.extend_from_slice(w.as_bytes());
        b.push(0);
        b.extend_from_slice(&1i64.to_le_bytes());
        b.push(0);
    }
    b.push(0);
    b.extend_from_slice(&((words.len() + bucket) as i64).to_le_bytes());
    b.extend_from_slice(&(dims as i64).to_le_bytes());
    for x in matrix {
        b.extend_from_slice(&x.to_le_bytes());
    }
    // output matrix (ignored by the reader)
    b.push(0);
    b.extend_from_slice(&0i64.to_le_bytes());
    b.extend_from_slice(&(dims as i64).to_le_bytes());
    b
}

#[test]
fn fasttext_import_matches_plain_mean_bit_for_bit() {
    // more words than one import block; </s> has no n-grams; multi-byte characters
    let (dims, bucket) = (13, 97);
    let mut words: Vec<String> = vec!["</s>".into(), "ü".into(), "日本語".into()];
    words.extend((0..700).map(|i| format!("w{i}x")));
    let nwords = words.len();
    let matrix = floats((nwords + bucket) * dims, 11);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.bin");
    std::fs::write(&p, fasttext_file(&words, dims, bucket, 3, 6, &matrix)).unwrap();

    let emb = fasttext::read_fasttext(&p, false, true).unwrap();
    let stored = array(&emb);
    assert_eq!((emb.len(), stored.rows()), (nwords, nwords + bucket));
    // n-gram rows as in the file
    assert_eq!(bits(&stored.as_slice()[nwords * dims..]), bits(&matrix[nwords * dims..]));
    let norms = emb.norms.as_ref().unwrap();
    let mut idx = Vec::new();
    for (i, w) in words.iter().enumerate() {
        idx.clear();
        fasttext::fasttext_ngram_rows(w, 3, 6, bucket as u32, nwords, &mut idx);
        let mut row = matrix[i * dims..(i + 1) * dims].to_vec();
        if !idx.is_empty() {
            for &g in &idx {
                for (o, v) in row.iter_mut().zip(&matrix[g * dims..(g + 1) * dims]) {
                    *o += v;
                }
            }
            let inv = 1.0 / (idx.len() + 1) as f32;
            row.iter_mut().for_each(|o| *o *= inv);
        }
        let (want, norm) = normalized(&row);
        assert_eq!(bits(stored.row(i)), bits(&want), "word {w}");
        assert_eq!(norms[i].to_bits(), norm.to_bits(), "norm of {w}");
    }

    // the file cut inside the input matrix: a format error, no crash
    let full = std::fs::read(&p).unwrap();
    let cut = full.len() - dims * 4 - 17 - 4 * dims * (bucket / 2);
    std::fs::write(&p, &full[..cut]).unwrap();
    assert!(fasttext::read_fasttext(&p, false, true).unwrap_err().is_format());
}

#[test]
fn word2vec_without_dimensions_keeps_the_empty_norm() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("z.bin");
    std::fs::write(&p, b"3 0\na \nb \nc \n").unwrap();
    let emb = read_word2vec_binary(&p, &ReadOptions::default()).unwrap();
    assert_eq!((emb.len(), emb.dims()), (3, 0));
    let empty = vecfusion::embeddings::l2_normalize(&mut []);
    assert!(emb.norms.as_ref().unwrap().iter().all(|n| n.to_bits() == empty.to_bits()));
}

/// A stop request (Ctrl-C from Python) ends the long reads and writes early: each call,
/// run with a token already set, fails and a write leaves no file behind (neither the
/// target nor its temporary file); the same calls succeed without a stop request.
#[test]
fn stop_requests_end_reads_and_writes() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use vecfusion::cancel::with_token;

    let dir = tempfile::tempdir().unwrap();
    // a matrix over 16 MiB, so that the finalfusion writer writes it in pieces
    let (n, dims) = (70_000, 64);
    let words: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
    let vocab = vecfusion::vocab::Vocab::Simple(vecfusion::vocab::WordList::new(words.iter().map(String::as_str)).unwrap());
    let storage = vecfusion::Storage::Array(vecfusion::ArrayStorage::new(floats(n * dims, 5), n, dims).unwrap());
    let emb = Embeddings::new(None, vocab, storage, None).unwrap();
    let stopped = || Arc::new(AtomicBool::new(true));
    let listing = || {
        let mut v: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    };

    let fifu = dir.path().join("e.fifu");
    let ft = dir.path().join("e.bin");
    assert!(with_token(stopped(), || emb.write_with_vocab(&fifu, None, None)).is_err());
    assert!(with_token(stopped(), || fasttext::write_fasttext(&emb, &ft)).is_err());
    assert!(listing().is_empty(), "{:?}", listing());

    emb.write_with_vocab(&fifu, None, None).unwrap();
    fasttext::write_fasttext(&emb, &ft).unwrap();
    assert_eq!(listing(), ["e.bin", "e.fifu"]);
    assert!(with_token(stopped(), || Embeddings::open(&fifu, OpenMode::Read)).is_err());
    assert!(with_token(stopped(), || fasttext::read_fasttext(&ft, false, true)).is_err());
    // a token that is not set changes nothing
    let calm = Arc::new(AtomicBool::new(false));
    assert_eq!(with_token(calm.clone(), || Embeddings::open(&fifu, OpenMode::Read)).unwrap().len(), n);
    assert_eq!(with_token(calm, || fasttext::read_fasttext(&ft, false, true)).unwrap().len(), n);
}
