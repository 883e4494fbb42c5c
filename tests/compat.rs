//! Golden files of the reference implementations: word2vec, text and fastText.

use std::path::PathBuf;

use vecfusion::compat::text::{read_text, write_text, Header};
use vecfusion::compat::word2vec::{read_word2vec_binary, write_word2vec_binary};
use vecfusion::compat::{fasttext, ReadOptions};
use vecfusion::{Embeddings, OpenMode};

fn golden(rel: &str) -> PathBuf {
    let shared = std::env::var_os("VECFUSION_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("shared"));
    shared.join("testdata").join(rel)
}

const RAW: ReadOptions = ReadOptions {
    lossy: false,
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
            lossy: true,
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
    let emb = fasttext::read_fasttext(&golden("finalfusion/rust/fasttext.bin"), false).unwrap();
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
