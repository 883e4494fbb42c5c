//! Helpers shared by the integration tests.

/// A deterministic xorshift64 stream from `seed` (any seed: it is made odd, never 0).
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}
