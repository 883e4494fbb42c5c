//! A reader of `fst` automata (format version 3, as the `fst` crate writes them) for the one
//! operation on the lookup path: follow a key's bytes from the root and sum the outputs.
//!
//! Why not `fst::raw::Fst::get`: the crate indexes its bytes unchecked and panics on a corrupt
//! automaton (a memory-mapped chunk is checked at use, not at open), so every call had to run
//! under `catch_unwind`; and a batch of words is walked here one transition per word at a time
//! (see `FstWords::index_group`), which needs the walk as single steps. Every read is
//! bounds-checked and every address computed with checked arithmetic: a corrupt automaton
//! gives [`Malformed`], never a panic, and a walk takes one step per key byte, so it always
//! ends. (Speed per step is the crate's: ~15 ns per key byte in the cache, bound by the chain
//! of dependent reads and the branch on each node's kind.)
//!
//! Node layout (read backwards from the node's address, its last byte):
//! - `11iiiiii`: one transition to the node right below it, output 0; input `i` (a common
//!   byte) or, with `i == 0`, the byte before.
//! - `10iiiiii`: one transition; below the input: a pack-size byte (target delta size in the
//!   high nibble, output size in the low one), the target delta, the output.
//! - `0fnnnnnn`: any number of transitions (`f`: final; `n == 0`: the count is the byte
//!   before, 1 meaning 256), then the pack-size byte, a 256-byte input -> transition index
//!   above 32 transitions, the inputs, the target deltas, the outputs and the final output,
//!   each list in reverse transition order.
//! - Address 0 is the empty final state. A target is the node's lowest address minus the delta.

/// The automaton's bytes do not decode (a corrupt chunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

type R<T> = Result<T, Malformed>;

/// The inputs of single-transition nodes stored in the state byte (index - 1), the first 63
/// of the fst format's table of common bytes.
const COMMON_INPUTS: &[u8; 63] = b"te/oasripcnw.hlm-du012g=:bf3y5&_4v9678k%?xCDASFIBEjPTzRNM+LOqHG";

/// Nodes with more transitions than this carry a 256-byte input index.
const INDEX_THRESHOLD: usize = 32;

#[inline(always)]
fn byte(d: &[u8], i: usize) -> R<u8> {
    d.get(i).copied().ok_or(Malformed)
}

#[inline(always)]
fn sub(a: usize, b: usize) -> R<usize> {
    a.checked_sub(b).ok_or(Malformed)
}

/// A little-endian unsigned integer of `n <= 8` bytes at `at`.
#[inline(always)]
fn uint(d: &[u8], at: usize, n: usize) -> R<u64> {
    let s = d.get(at..at.checked_add(n).ok_or(Malformed)?).ok_or(Malformed)?;
    let mut a = [0u8; 8];
    a[..n].copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

/// (target delta size, output size) of a pack-size byte.
#[inline(always)]
fn pack_sizes(v: u8) -> R<(usize, usize)> {
    let (t, o) = ((v >> 4) as usize, (v & 0x0f) as usize);
    if t > 8 || o > 8 {
        return Err(Malformed);
    }
    Ok((t, o))
}

/// The target of a transition: delta 0 is the empty final state.
#[inline(always)]
fn target(end: usize, delta: u64) -> R<usize> {
    if delta == 0 {
        Ok(0)
    } else {
        sub(end, usize::try_from(delta).map_err(|_| Malformed)?)
    }
}

/// The input of a single-transition node and how many bytes it takes below the state byte.
#[inline(always)]
fn single_input(d: &[u8], addr: usize, v: u8) -> R<(u8, usize)> {
    match v & 0x3f {
        0 => Ok((byte(d, sub(addr, 1)?)?, 1)),
        c => Ok((COMMON_INPUTS[c as usize - 1], 0)),
    }
}

/// Of a many-transition node: (transition count, position of its pack-size byte).
#[inline(always)]
fn any_header(d: &[u8], addr: usize, v: u8) -> R<(usize, usize)> {
    match v & 0x3f {
        0 => {
            let n = byte(d, sub(addr, 1)?)? as usize;
            Ok((if n == 1 { 256 } else { n }, sub(addr, 2)?))
        }
        n => Ok((n as usize, sub(addr, 1)?)),
    }
}

/// Follow the transition on `b` out of the node at `addr`: `(target, output)`, or `None`
/// when the node has no such transition.
#[inline]
pub fn step(d: &[u8], addr: usize, b: u8) -> R<Option<(usize, u64)>> {
    if addr == 0 {
        return Ok(None); // the empty final state has no transitions
    }
    let v = byte(d, addr)?;
    match v >> 6 {
        0b11 => {
            let (inp, len) = single_input(d, addr, v)?;
            if inp != b {
                return Ok(None);
            }
            Ok(Some((sub(addr - len, 1)?, 0)))
        }
        0b10 => {
            let (inp, len) = single_input(d, addr, v)?;
            if inp != b {
                return Ok(None);
            }
            let p = sub(addr, len + 1)?;
            let (ts, os) = pack_sizes(byte(d, p)?)?;
            let at = sub(p, ts)?;
            let end = sub(at, os)?;
            let out = if os == 0 { 0 } else { uint(d, end, os)? };
            Ok(Some((target(end, uint(d, at, ts)?)?, out)))
        }
        _ => {
            let (n, p) = any_header(d, addr, v)?;
            let (ts, os) = pack_sizes(byte(d, p)?)?;
            let index = if n > INDEX_THRESHOLD { 256 } else { 0 };
            let inputs_end = sub(p, index)?;
            let inputs_start = sub(inputs_end, n)?;
            let i = if index > 0 {
                let i = byte(d, inputs_end + b as usize)? as usize;
                if i >= n {
                    return Ok(None);
                }
                i
            } else {
                let inputs = d.get(inputs_start..inputs_end).ok_or(Malformed)?;
                match inputs.iter().position(|&x| x == b) {
                    Some(k) => n - k - 1,
                    None => return Ok(None),
                }
            };
            let delta = uint(d, sub(inputs_start, (i + 1) * ts)?, ts)?;
            let outs_end = sub(inputs_start, n * ts)?;
            let final_size = if v & 0x40 != 0 { os } else { 0 };
            let end = sub(outs_end, n * os + final_size)?;
            let out = if os == 0 { 0 } else { uint(d, sub(outs_end, (i + 1) * os)?, os)? };
            Ok(Some((target(end, delta)?, out)))
        }
    }
}

/// The final output of the node at `addr`, `None` if it is not final.
#[inline]
pub fn final_output(d: &[u8], addr: usize) -> R<Option<u64>> {
    if addr == 0 {
        return Ok(Some(0));
    }
    let v = byte(d, addr)?;
    if v >> 6 != 0b01 {
        return Ok(None); // single-transition nodes are never final; `00` is a non-final one
    }
    let (n, p) = any_header(d, addr, v)?;
    let (ts, os) = pack_sizes(byte(d, p)?)?;
    if os == 0 {
        return Ok(Some(0));
    }
    let index = if n > INDEX_THRESHOLD { 256 } else { 0 };
    let outs_end = sub(p, n + n * ts + index)?;
    Ok(Some(uint(d, sub(outs_end, (n + 1) * os)?, os)?))
}

/// The value of `key` in the automaton `d` whose root node is at `root`.
#[inline]
pub fn get(d: &[u8], root: usize, key: &[u8]) -> R<Option<u64>> {
    let mut addr = root;
    let mut out = 0u64;
    for &b in key {
        match step(d, addr, b)? {
            Some((next, o)) => {
                addr = next;
                out = out.wrapping_add(o);
            }
            None => return Ok(None),
        }
    }
    Ok(final_output(d, addr)?.map(|f| out.wrapping_add(f)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An fst of `keys` (sorted, deduplicated here) with arbitrary values, checked against
    /// the `fst` crate for every key, every prefix and extension of one, and strangers.
    fn check(mut keys: Vec<Vec<u8>>, value: impl Fn(usize) -> u64) {
        keys.sort();
        keys.dedup();
        let mut b = fst::raw::Builder::memory();
        for (i, k) in keys.iter().enumerate() {
            b.insert(k, value(i)).unwrap();
        }
        let f = fst::raw::Fst::new(b.into_inner().unwrap()).unwrap();
        let (d, root) = (f.as_bytes(), f.root().addr());
        let mut probes = keys.clone();
        for k in keys.iter().take(500) {
            for cut in 0..k.len() {
                probes.push(k[..cut].to_vec());
            }
            for extra in [0u8, b'a', b'e', 0xff] {
                probes.push([k.as_slice(), &[extra]].concat());
            }
        }
        probes.extend([vec![], vec![0], vec![0xff; 3], b"zzzzzz".to_vec()]);
        for p in &probes {
            assert_eq!(get(d, root, p), Ok(f.get(p).map(|o| o.value())), "key {p:?}");
        }
    }

    fn lcg(x: &mut u64) -> u64 {
        *x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        *x >> 33
    }

    #[test]
    fn agrees_with_the_fst_crate() {
        check(vec![], |i| i as u64);
        check(vec![vec![]], |_| 0);
        check(vec![vec![], b"a".to_vec()], |i| i as u64 + 5);
        // every byte value as a single-transition input (common inputs in the state byte and
        // others in the byte below), with and without outputs
        for b in 0..=255u8 {
            check(vec![vec![b], vec![b, b, b'x'], vec![b'q', b]], |i| i as u64);
            check(vec![vec![b, b'a', b'b'], vec![b, b'a', b'b', b]], |_| 0);
        }
        // wide nodes (an input index above 32 transitions, 256 transitions), big outputs
        let all: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        check(all.clone(), |i| i as u64);
        check(all.iter().map(|k| [b"p".as_slice(), k].concat()).collect(), |i| (i as u64) << 40);
        check((0..33u8).map(|b| vec![b'm', b]).collect(), |i| 1000 * i as u64);
        check((0..32u8).map(|b| vec![b'm', b]).collect(), |i| i as u64);
        // random vocabularies with shared prefixes; ranks as values (as the vocabulary uses)
        // and random ones
        let mut x = 7;
        for round in 0..40 {
            let alphabet: Vec<u8> = match round % 3 {
                0 => b"aeiou".to_vec(),
                1 => b"etaoinshrdlcumwfgypbvkjxqz0123456789-_./".to_vec(),
                _ => (0..=255).collect(),
            };
            let n = 1 + lcg(&mut x) as usize % 3000;
            let keys: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    let len = lcg(&mut x) as usize % 12;
                    (0..len).map(|_| alphabet[lcg(&mut x) as usize % alphabet.len()]).collect()
                })
                .collect();
            if round % 2 == 0 {
                check(keys, |i| i as u64);
            } else {
                let seed = x;
                check(keys, move |i| (seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> (i % 60));
            }
        }
    }

    #[test]
    fn corrupt_bytes_never_panic() {
        let mut b = fst::raw::Builder::memory();
        let mut keys: Vec<String> = (0..400).map(|i| format!("w{}x{}", i * 7919 % 1000, i % 37)).collect();
        keys.extend((0..40u8).map(|c| format!("k{}", (b'0' + c) as char)));
        keys.sort();
        keys.dedup();
        for (i, k) in keys.iter().enumerate() {
            b.insert(k, i as u64).unwrap();
        }
        let good = b.into_inner().unwrap();
        let root = fst::raw::Fst::new(good.clone()).unwrap().root().addr();
        let mut x = 3;
        for _ in 0..3000 {
            let mut d = good.clone();
            for _ in 0..1 + lcg(&mut x) % 4 {
                let i = lcg(&mut x) as usize % d.len();
                d[i] ^= 1 << (lcg(&mut x) % 8);
            }
            let cut = if lcg(&mut x) % 4 == 0 { lcg(&mut x) as usize % d.len() } else { d.len() };
            for k in keys.iter().step_by(5) {
                let _ = get(&d[..cut], root, k.as_bytes());
            }
            let _ = get(&d[..cut], usize::MAX, b"w1");
        }
    }
}

