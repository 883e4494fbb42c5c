//! Known-word lookup through the fst vocabulary vs the in-memory hash map, without Python in
//! the way. Run by benches/bench_open.py, or:
//!
//!     cargo bench --bench vocab_lookup -- FST_FILE STANDARD_FILE
//!
//! Both files are memory-mapped (the standard one builds its hash map at open). Prints
//! nanoseconds per lookup (best of 5 passes over 200,000 sampled known words) and ratios.

use std::hint::black_box;
use std::time::Instant;

use vecfusion::{Embeddings, OpenMode};

fn best_ns<F: FnMut() -> usize>(n: usize, mut f: F) -> f64 {
    let mut best = f64::MAX;
    black_box(f());
    for _ in 0..5 {
        let t = Instant::now();
        black_box(f());
        best = best.min(t.elapsed().as_secs_f64());
    }
    best / n as f64 * 1e9
}

fn main() -> Result<(), vecfusion::Error> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if args.len() != 2 {
        eprintln!("usage: vocab_lookup FST_FILE STANDARD_FILE");
        std::process::exit(2);
    }
    let fst = Embeddings::open(&args[0], OpenMode::Mmap)?;
    let std = Embeddings::open(&args[1], OpenMode::Mmap)?;
    let n = std.len();
    // A deterministic sample of known words (an LCG over the rows).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let rows: Vec<usize> = (0..200_000)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((x >> 33) as usize) % n
        })
        .collect();
    let words: Vec<String> = rows.iter().map(|&i| std.vocab.word(i).unwrap_or_default().to_string()).collect();
    for (w, &i) in words.iter().zip(&rows) {
        assert_eq!(fst.vocab.word_index(w), Some(i), "fst and standard disagree on {w:?}");
    }
    let idx = |e: &Embeddings| {
        let v = &e.vocab;
        best_ns(words.len(), || words.iter().map(|w| v.word_index(w).unwrap_or(0)).sum())
    };
    let (f_idx, s_idx) = (idx(&fst), idx(&std));
    // The batch path (`emb.lookup`, the bag layer): groups of INDEX_GROUP words whose cache
    // misses overlap (interleaved automaton walks / prefetched hash-table entries).
    let grouped = |e: &Embeddings| {
        let list = e.vocab.words().expect("a word list");
        let mut rows = [None; vecfusion::vocab::INDEX_GROUP];
        best_ns(words.len(), || {
            let mut sum = 0;
            for g in words.chunks(vecfusion::vocab::INDEX_GROUP) {
                let rows = &mut rows[..g.len()];
                list.index_group(g, rows, |_| ());
                sum += rows.iter().map(|r| r.unwrap_or(0)).sum::<usize>();
            }
            sum
        })
    };
    let (f_grp, s_grp) = (grouped(&fst), grouped(&std));
    let fst_read = Embeddings::open(&args[0], OpenMode::Read)?;
    println!("word -> row, fst read into memory: {:.0} ns", idx(&fst_read));
    let rev = |e: &Embeddings| {
        let v = &e.vocab;
        best_ns(rows.len(), || rows.iter().map(|&i| v.try_word(i).ok().flatten().map_or(0, |w| w.len())).sum())
    };
    let (f_rev, s_rev) = (rev(&fst), rev(&std));
    // Lower bound: the bare automaton (fst::Map in memory, no tables, no checks).
    let all: Vec<String> = std.vocab.words().map(|l| l.iter().map(str::to_string).collect()).unwrap_or_default();
    let mut sorted: Vec<&str> = all.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let bare = fst::Map::from_iter(sorted.iter().enumerate().map(|(i, w)| (*w, i as u64))).expect("sorted words");
    let f_bare = best_ns(words.len(), || words.iter().map(|w| bare.get(w).unwrap_or(0) as usize).sum());
    println!("bare fst::Map::get over the sampled words: {f_bare:.0} ns");
    println!("word -> row: fst {f_idx:.0} ns, hash map {s_idx:.0} ns ({:.2}x)", f_idx / s_idx);
    println!("word -> row, groups of {}: fst {f_grp:.0} ns, hash map {s_grp:.0} ns ({:.2}x)", vecfusion::vocab::INDEX_GROUP, f_grp / s_grp);
    println!("row -> word: fst {f_rev:.0} ns, in-memory list {s_rev:.0} ns ({:.2}x)", f_rev / s_rev);
    Ok(())
}
