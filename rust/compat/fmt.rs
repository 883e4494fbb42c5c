//! Printing f32 values the way finalfusion's text writer does (Rust's `Display`):
//! the shortest digits that round-trip, in plain decimal notation, never an exponent
//! (`3`, `-0.5`, `0.0000000001`, `-0`, `NaN`, `inf`).
//!
//! `ryu` was tried for speed, but it breaks ties between two equally short candidates
//! differently from Rust's formatter (1050739.25 prints as `1050739.2` with ryu and
//! `1050739.3` with `Display`), which would break byte-identical round trips, so the
//! standard formatter is used; text writing runs on all cores instead.

use std::io::Write;

/// Append `x` to `out`.
#[inline]
pub fn push_f32(out: &mut Vec<u8>, x: f32) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{x}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn show(x: f32) -> String {
        let mut out = Vec::new();
        push_f32(&mut out, x);
        String::from_utf8(out).unwrap()
    }

    #[test]
    // 1050739.25 is exact in f32 and halfway between two shortest candidates: on purpose
    #[allow(clippy::excessive_precision)]
    fn plain_decimal() {
        for (x, s) in [
            (3.0f32, "3"),
            (-0.5, "-0.5"),
            (1e-10, "0.0000000001"),
            (0.0, "0"),
            (-0.0, "-0"),
            (1e20, "100000000000000000000"),
            (1.4724287, "1.4724287"),
            (1050739.25, "1050739.3"),
            (f32::NAN, "NaN"),
            (f32::NEG_INFINITY, "-inf"),
        ] {
            assert_eq!(show(x), s);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]
        #[test]
        fn round_trips_without_exponent(bits in any::<u32>()) {
            let x = f32::from_bits(bits);
            prop_assume!(x.is_finite());
            let s = show(x);
            prop_assert!(!s.contains('e'));
            prop_assert_eq!(s.parse::<f32>().unwrap().to_bits(), x.to_bits());
        }
    }
}
