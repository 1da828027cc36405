//! A small mutation fuzzer on stable Rust, with no dependency: each crate's fuzz tests give it a
//! target (a decoder or a parser), a few valid inputs to start from and the tokens of the format,
//! and it feeds the target mutated inputs — bit flips, random and boundary bytes, deleted,
//! duplicated and spliced ranges, inserted tokens — keeping the inputs the target accepts as new
//! starting points, so that mutations reach past the first checks. A target fails the test by
//! panicking; the fuzzer then prints the input that did it (hex and text) and the seed.
//!
//! How many inputs: `HOPSCOPE_FUZZ_INPUTS` (20 000 per target by default, the short pass the test
//! suite runs); which: `HOPSCOPE_FUZZ_SEED`. The long run (SECURITY.md):
//! `HOPSCOPE_FUZZ_INPUTS=10000000 cargo test --release -p hopscope-ingest -p hopscope-query fuzz_ -- --nocapture`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

/// Inputs per target when `HOPSCOPE_FUZZ_INPUTS` is not set.
pub const DEFAULT_INPUTS: u64 = 20_000;
/// Longest input the fuzzer makes.
const MAX_LEN: usize = 64 * 1024;
/// Accepted inputs kept as starting points, at most.
const MAX_CORPUS: usize = 4_096;

/// A target: `Ok(true)` when it accepted the input, `Ok(false)` when it refused it (as it should,
/// with an error); a panic is the failure the fuzzer looks for.
pub type Target<'a> = dyn Fn(&[u8]) -> bool + 'a;

/// What one run did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub target: String,
    pub inputs: u64,
    pub accepted: u64,
    pub seconds: f64,
}

/// The number of inputs per target the environment asks for.
pub fn inputs() -> u64 {
    std::env::var("HOPSCOPE_FUZZ_INPUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_INPUTS)
}

fn seed() -> u64 {
    std::env::var("HOPSCOPE_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed_f00d)
}

/// splitmix64: fast, and the same sequence for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Bytes that sit on boundaries: zero, the ends of signed and unsigned bytes, protobuf varint
/// continuation, and JSON's and text's structure.
const BOUNDARY_BYTES: &[u8] = b"\x00\x01\x7f\x80\xff\xfe\x08\x10\x12\x1a\x22\x0a\"\\{}[]:,-.0 e";

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>], tokens: &[&[u8]]) {
    let choice = rng.below(8);
    let len = input.len();
    match choice {
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            input[i] = BOUNDARY_BYTES[rng.below(BOUNDARY_BYTES.len())];
        }
        2 => {
            let i = rng.below(len + 1);
            let byte = rng.next() as u8;
            input.insert(i, byte);
        }
        3 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(16)).min(len);
            input.drain(start..end);
        }
        4 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(64)).min(len);
            let copy = input[start..end].to_vec();
            let at = rng.below(input.len() + 1);
            input.splice(at..at, copy);
        }
        5 if !corpus.is_empty() => {
            let other = &corpus[rng.below(corpus.len())];
            if !other.is_empty() {
                let start = rng.below(other.len());
                let end = (start + 1 + rng.below(other.len() - start)).min(other.len());
                let at = rng.below(len + 1);
                let cut = (at + rng.below(len - at + 1)).min(len);
                input.splice(at..cut, other[start..end].iter().copied());
            }
        }
        6 if !tokens.is_empty() => {
            let token = tokens[rng.below(tokens.len())];
            let at = rng.below(len + 1);
            input.splice(at..at, token.iter().copied());
        }
        _ if len > 0 => {
            // A varint-sized run of 0xff or a truncation: lengths and ends of messages.
            if rng.below(2) == 0 {
                input.truncate(rng.below(len));
            } else {
                let at = rng.below(len + 1);
                let run = 1 + rng.below(10);
                input.splice(at..at, std::iter::repeat_n(0xff, run));
            }
        }
        _ => input.push(rng.next() as u8),
    }
    input.truncate(MAX_LEN);
}

/// Feeds `target` [`inputs`] inputs made from `seeds` and `tokens`; panics (failing the test) with
/// the input when the target panics.
pub fn run(name: &str, seeds: Vec<Vec<u8>>, tokens: &[&[u8]], target: &Target<'_>) -> Report {
    let total = inputs();
    let seed = seed();
    let mut rng = Rng(seed ^ name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))));
    let mut corpus = seeds;
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let started = Instant::now();
    let mut accepted = 0u64;
    for n in 0..total {
        let mut input = corpus[rng.below(corpus.len())].clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut input, &corpus, tokens);
        }
        match catch_unwind(AssertUnwindSafe(|| target(&input))) {
            Ok(true) => {
                accepted += 1;
                if corpus.len() < MAX_CORPUS {
                    corpus.push(input);
                } else {
                    let i = rng.below(corpus.len());
                    corpus[i] = input;
                }
            }
            Ok(false) => {}
            Err(_) => {
                // The whole input goes to a file; the message shows its start.
                let path = std::env::temp_dir().join(format!("hopscope-fuzz-{name}-{seed}-{n}.bin"));
                let saved = match std::fs::write(&path, &input) {
                    Ok(()) => format!("saved in {}", path.display()),
                    Err(e) => format!("not saved ({e})"),
                };
                let shown = &input[..input.len().min(512)];
                panic!(
                    "fuzz target {name} panicked on input {n} (HOPSCOPE_FUZZ_SEED={seed}), {} bytes, {saved}; \
                     the first {}:\nhex: {}\ntext: {:?}",
                    input.len(),
                    shown.len(),
                    shown.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                    String::from_utf8_lossy(shown),
                )
            }
        }
    }
    let report = Report { target: name.to_owned(), inputs: total, accepted, seconds: started.elapsed().as_secs_f64() };
    println!(
        "fuzz {}: {} inputs, {} accepted, {:.1} s ({:.0} inputs/s)",
        report.target,
        report.inputs,
        report.accepted,
        report.seconds,
        report.inputs as f64 / report.seconds.max(1e-9)
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_target_is_reported_with_its_input() {
        let outcome = catch_unwind(|| {
            run("finds-a-zero", vec![b"abc".to_vec()], &[b"\x00"], &|input: &[u8]| {
                assert!(!input.contains(&0), "a zero byte");
                true
            })
        });
        let message = *outcome.unwrap_err().downcast::<String>().unwrap();
        assert!(message.starts_with("fuzz target finds-a-zero panicked on input"), "{message}");
        assert!(message.contains("hex: ") && message.contains("00"), "{message}");
    }

    #[test]
    fn accepted_inputs_become_starting_points() {
        // Inputs of 8 or more 'a's come only from mutating accepted inputs again and again (one
        // input gets at most 4 mutations from the 1-byte seed).
        let longest = std::cell::Cell::new(0);
        let report = run("grows", vec![b"a".to_vec()], &[b"a"], &|input: &[u8]| {
            let all_a = !input.is_empty() && input.iter().all(|&b| b == b'a');
            if all_a {
                longest.set(longest.get().max(input.len()));
            }
            all_a
        });
        assert_eq!(report.inputs, inputs());
        assert!(longest.get() >= 8, "longest accepted input: {}", longest.get());
    }
}
