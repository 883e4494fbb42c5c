//! Small queries and lookups run on the calling thread, never waiting for rayon's pool.
//!
//! From Python such calls keep the GIL (`py::fork::detach_if`): had they handed work to the
//! pool while another thread's long call kept it busy, every Python thread would have waited
//! for that call (a heartbeat thread stalled 1.7 s). Here the pool is kept busy on purpose
//! and each small call must finish without it. (Its own test binary: it blocks the pool.)

mod common;

use std::sync::mpsc;
use std::time::Duration;

use vecfusion::query::Term;
use vecfusion::storage::{QuantizedStorage, U8Data};
use vecfusion::vocab::{Indexer, SubwordVocab};
use vecfusion::{ArrayStorage, Embeddings, Storage, Vocab, WordList};

fn words(n: usize) -> Vocab {
    let w: Vec<String> = (0..n).map(|i| format!("w{i:05}")).collect();
    Vocab::Simple(WordList::new(w.iter().map(String::as_str)).unwrap())
}

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut next = common::xorshift(seed);
    (0..n).map(|_| (next() % 2000) as f32 / 1000.0 - 1.0).collect()
}

/// Runs `f` while every thread of rayon's global pool is blocked; panics if `f` does not
/// finish within a minute (it would wait for the pool: a deadlock until the pool is freed).
fn without_pool(what: &str, f: impl FnOnce() + Send + 'static) {
    let threads = rayon::current_num_threads();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = std::sync::Arc::new(std::sync::Mutex::new(release_rx));
    let (started_tx, started_rx) = mpsc::channel::<()>();
    for _ in 0..threads {
        let rx = release_rx.clone();
        let started = started_tx.clone();
        rayon::spawn(move || {
            started.send(()).unwrap();
            let _ = rx.lock().unwrap().recv();
        });
    }
    for _ in 0..threads {
        started_rx.recv().unwrap();
    }
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = done_tx.send(());
    });
    let finished = done_rx.recv_timeout(Duration::from_secs(60)).is_ok();
    for _ in 0..threads {
        let _ = release_tx.send(());
    }
    assert!(finished, "{what} waited for the busy thread pool");
    // (a call that did wait finishes once the pool is free: not left running)
    let _ = done_rx.recv_timeout(Duration::from_secs(60));
}

#[test]
fn small_calls_do_not_wait_for_a_busy_pool() {
    let (n, d) = (2000, 8);
    let dense = std::sync::Arc::new(
        Embeddings::new(None, words(n), Storage::Array(ArrayStorage::new(values(n * d, 7), n, d).unwrap()), None).unwrap(),
    );
    let e = dense.clone();
    without_pool("cosines_all", move || {
        let q = values(d, 3);
        assert_eq!(e.cosines_all(&q, None).len(), n);
    });
    let e = dense.clone();
    without_pool("most_similar", move || {
        assert_eq!(e.most_similar(&["w00001"], &[], 5, &[]).unwrap().len(), 5);
    });
    let e = dense.clone();
    without_pool("most_similar_cosmul and cosmul_all", move || {
        let (pos, neg) = ([Term::Word("w00001"), Term::Word("w00002")], [Term::Word("w00003")]);
        assert_eq!(e.most_similar_cosmul(&pos, &neg, 5, None).unwrap().len(), 5);
        assert_eq!(e.cosmul_all(&pos, &neg, Some(100)).unwrap().len(), 100);
    });
    let e = dense.clone();
    without_pool("lookup of 2000 words", move || {
        let ws: Vec<String> = (0..n).map(|i| format!("w{i:05}")).collect();
        let mut out = vec![0f32; n * d];
        let mut found = vec![false; n];
        e.lookup_into_with(&ws, &mut out, &mut found, false);
        assert!(found.iter().all(|&f| f));
    });
    // with norms: the first query checks whether the rows are unit vectors
    let unit_rows: Vec<f32> = values(n * d, 9)
        .chunks(d)
        .flat_map(|r| {
            let l = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            r.iter().map(move |x| x / l).collect::<Vec<_>>()
        })
        .collect();
    let with_norms = Embeddings::new(
        None,
        words(n),
        Storage::Array(ArrayStorage::new(unit_rows, n, d).unwrap()),
        Some(vec![1.0; n]),
    )
    .unwrap();
    without_pool("the first most_similar with norms", move || {
        assert!(with_norms.unit_rows());
        assert_eq!(with_norms.most_similar(&["w00001"], &[], 3, &[]).unwrap().len(), 3);
    });
    // quantized with a projection: the first cosine query computes the rows' lengths
    let (m, k) = (4, 8);
    let codes: Vec<u8> = values(n * m, 11).iter().map(|v| ((v + 1.0) * 3.9) as u8).collect();
    let q = QuantizedStorage::new(Some(values(d * d, 13)), values(m * k * (d / m), 17), None, U8Data::Owned(codes.into()), n, d, m, k)
        .unwrap();
    let quantized = Embeddings::new(None, words(n), Storage::Quantized(q), None).unwrap();
    without_pool("the first quantized cosine query", move || {
        assert_eq!(quantized.most_similar(&["w00001"], &[], 3, &[]).unwrap().len(), 3);
    });
    // OPQ at 96 dims (the orthogonality check: d³ work whatever the rows) over a subword
    // vocabulary whose n-gram rows outnumber the words (only word rows get lengths)
    let (n, d, m, k, exponent) = (500, 96, 24, 8, 15);
    let rows = n + (1 << exponent);
    let mut rotation = vec![0f32; d * d];
    for i in 0..d {
        rotation[i * d + (i * 7 + 3) % d] = 1.0; // a permutation: orthogonal
    }
    let list: Vec<String> = (0..n).map(|i| format!("w{i:05}")).collect();
    let vocab = Vocab::Subword(SubwordVocab {
        words: WordList::new(list.iter().map(String::as_str)).unwrap(),
        min_n: 3,
        max_n: 6,
        indexer: Indexer::Bucket { exponent },
        fasttext_ngrams: false,
    });
    let codes: Vec<u8> = values(rows * m, 19).iter().map(|v| ((v + 1.0) * 3.9) as u8).collect();
    let q = QuantizedStorage::new(Some(rotation), values(m * k * (d / m), 23), None, U8Data::Owned(codes.into()), rows, d, m, k)
        .unwrap();
    let subword = Embeddings::new(None, vocab, Storage::Quantized(q), None).unwrap();
    without_pool("the first OPQ cosine query of a subword vocabulary", move || {
        assert_eq!(subword.most_similar(&["w00001"], &[], 3, &[]).unwrap().len(), 3);
        assert_eq!(subword.cosines_all(&values(d, 29), None).len(), n);
    });
}
