//! Printing f32 values the way Rust's `Display` does (and finalfusion's text writer):
//! the shortest digits that round-trip, in plain decimal notation, never an exponent
//! (`3`, `-0.5`, `0.0000000001`, `-0`, `NaN`, `inf`).
//!
//! `ryu` finds the shortest digits (much faster than `format!`); its output may use an
//! exponent, so the digits are re-laid out here.

/// Append `x` to `out`.
#[inline]
pub fn push_f32(out: &mut Vec<u8>, x: f32, buf: &mut ryu::Buffer) {
    if x.is_nan() {
        out.extend_from_slice(b"NaN");
        return;
    }
    if x.is_infinite() {
        out.extend_from_slice(if x < 0.0 { b"-inf" } else { b"inf" });
        return;
    }
    let s = buf.format_finite(x).as_bytes();
    // Split ryu's output into sign, digits, position of the decimal point and exponent.
    let mut digits = [0u8; 24];
    let mut nd = 0usize;
    let mut int_len: i32 = -1;
    let mut neg = false;
    let mut exp: i32 = 0;
    let mut i = 0;
    if s.first() == Some(&b'-') {
        neg = true;
        i = 1;
    }
    while i < s.len() {
        let c = s[i];
        match c {
            b'0'..=b'9' => {
                if nd < digits.len() {
                    digits[nd] = c;
                    nd += 1;
                }
            }
            b'.' => int_len = nd as i32,
            b'e' | b'E' => {
                let mut j = i + 1;
                let mut eneg = false;
                if j < s.len() && (s[j] == b'-' || s[j] == b'+') {
                    eneg = s[j] == b'-';
                    j += 1;
                }
                let mut e: i32 = 0;
                while j < s.len() {
                    e = e * 10 + i32::from(s[j] - b'0');
                    j += 1;
                }
                exp = if eneg { -e } else { e };
                break;
            }
            _ => {}
        }
        i += 1;
    }
    if int_len < 0 {
        int_len = nd as i32;
    }
    // value = 0.d1 d2 ... dn x 10^pos
    let mut pos = int_len + exp;
    let mut start = 0usize;
    while start < nd && digits[start] == b'0' {
        start += 1;
        pos -= 1;
    }
    let mut end = nd;
    while end > start && digits[end - 1] == b'0' {
        end -= 1;
    }
    if neg {
        out.push(b'-');
    }
    if start == end {
        out.push(b'0');
        return;
    }
    let d = &digits[start..end];
    let k = d.len() as i32;
    if pos <= 0 {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', (-pos) as usize));
        out.extend_from_slice(d);
    } else if pos >= k {
        out.extend_from_slice(d);
        out.extend(std::iter::repeat_n(b'0', (pos - k) as usize));
    } else {
        let p = pos as usize;
        out.extend_from_slice(&d[..p]);
        out.push(b'.');
        out.extend_from_slice(&d[p..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn show(x: f32) -> String {
        let mut out = Vec::new();
        push_f32(&mut out, x, &mut ryu::Buffer::new());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn plain_decimal() {
        for (x, s) in [
            (3.0f32, "3"),
            (-0.5, "-0.5"),
            (1e-10, "0.0000000001"),
            (0.0, "0"),
            (-0.0, "-0"),
            (1e20, "100000000000000000000"),
            (1.4724287, "1.4724287"),
            (f32::NAN, "NaN"),
            (f32::NEG_INFINITY, "-inf"),
        ] {
            assert_eq!(show(x), s);
            assert_eq!(show(x), format!("{x}"));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20000))]
        #[test]
        fn same_as_display(bits in any::<u32>()) {
            let x = f32::from_bits(bits);
            prop_assert_eq!(show(x), format!("{x}"));
        }

        #[test]
        fn round_trips(x in -1e6f32..1e6f32) {
            let s = show(x);
            prop_assert_eq!(s.parse::<f32>().unwrap().to_bits(), x.to_bits());
        }
    }
}
