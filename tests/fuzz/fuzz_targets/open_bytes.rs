//! Any byte string given to the finalfusion parser must give Ok or an Err, never a
//! panic, an abort or a huge allocation (libFuzzer's -rss_limit_mb catches the latter).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(emb) = vecfusion::Embeddings::from_bytes(data, None) {
        // whatever parses must be usable
        let words: Vec<String> = emb.vocab.words().map(|w| w.iter().take(4).map(str::to_string).collect()).unwrap_or_default();
        for w in &words {
            let _ = emb.embedding(w);
        }
        let _ = emb.embedding("tübingen");
        let mut out = Vec::new();
        let _ = emb.write_to(&mut out);
    }
});
