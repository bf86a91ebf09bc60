//! A small mutation fuzzer: libFuzzer (cargo-fuzz) needs a nightly
//! toolchain and sanitizer builds of every dependency, which this project's
//! stable-only machines cannot do (docs/fuzzing.md). Each target is a
//! binary that mutates its seed corpus (`fuzz/corpus/<target>/`) with
//! libFuzzer-style byte mutations and a per-target dictionary, runs the
//! target on every input under `catch_unwind`, and writes any input that
//! panics to `fuzz/artifacts/<target>/` before exiting with status 1.
//!
//! It is coverage-blind: it finds what random mutation of realistic seeds
//! finds, not what coverage guidance would. Usage:
//! `fuzz-target [EXECUTIONS] [SEED]` (defaults 1,000,000 and 1).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// xorshift64*: fast, deterministic for a seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

const INTERESTING: &[&[u8]] = &[
    b"\0",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\xc3\xa9",
    b"\xed\xa0\x80",
    b"\xf0\x9f\x98\x80",
    b"0",
    b"-1",
    b"18446744073709551615",
    b"18446744073709551616",
    b"9223372036854775807",
    b"1e308",
    b"\r\n",
    b"\n",
    b" ",
    b"\\",
    b"\"",
    b"%",
    b"%00",
    b"%ff",
    b"%2F",
    b"%%",
];

/// One mutation of `input` (never longer than `max`).
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>], dict: &[&[u8]], max: usize) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        match rng.below(9) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] = rng.next_u64() as u8;
            }
            2 => {
                let i = rng.below(input.len() + 1);
                input.insert(i, rng.next_u64() as u8);
            }
            3 if !input.is_empty() => {
                let i = rng.below(input.len());
                let n = 1 + rng.below((input.len() - i).min(16));
                input.drain(i..i + n);
            }
            4 if !input.is_empty() => {
                // Duplicate a range.
                let i = rng.below(input.len());
                let n = 1 + rng.below((input.len() - i).min(32));
                let piece = input[i..i + n].to_vec();
                let at = rng.below(input.len() + 1);
                input.splice(at..at, piece);
            }
            5 if !corpus.is_empty() => {
                // Splice in part of another seed.
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let i = rng.below(other.len());
                    let n = 1 + rng.below(other.len() - i);
                    let at = rng.below(input.len() + 1);
                    input.splice(at..at, other[i..i + n].iter().copied());
                }
            }
            6 | 7 => {
                let token = if rng.below(2) == 0 && !dict.is_empty() {
                    dict[rng.below(dict.len())]
                } else {
                    INTERESTING[rng.below(INTERESTING.len())]
                };
                let at = rng.below(input.len() + 1);
                if rng.below(2) == 0 || input.len() < token.len() {
                    input.splice(at..at, token.iter().copied());
                } else {
                    let at = rng.below(input.len() - token.len() + 1);
                    input[at..at + token.len()].copy_from_slice(token);
                }
            }
            _ => {
                if !input.is_empty() {
                    let cut = rng.below(input.len());
                    input.truncate(cut.max(1));
                }
            }
        }
    }
    input.truncate(max);
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Runs `target` on mutations of the corpus; exits 1 on the first panic.
pub fn run(name: &str, dict: &[&[u8]], max: usize, mut target: impl FnMut(&[u8])) {
    let mut args = std::env::args().skip(1);
    let executions: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let dir = fuzz_dir().join("corpus").join(name);
    let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    corpus.sort();
    // Silence the default hook: a panic is reported once, below.
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut input = Vec::with_capacity(max);
    for n in 0..executions {
        input.clear();
        input.extend_from_slice(&corpus[rng.below(corpus.len())]);
        // Every seed runs unmodified once first.
        if n >= corpus.len() as u64 {
            mutate(&mut rng, &mut input, &corpus, dict, max);
        } else {
            input.clear();
            input.extend_from_slice(&corpus[n as usize]);
        }
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            let _ = std::panic::take_hook();
            let out = fuzz_dir().join("artifacts").join(name);
            let _ = std::fs::create_dir_all(&out);
            let file = out.join(format!("crash-{n}-seed{seed}"));
            let _ = std::fs::write(&file, &input);
            eprintln!(
                "{name}: PANIC at execution {n} (seed {seed}); input saved to {}",
                file.display()
            );
            // Re-run with the default hook to print the panic message.
            target(&input);
            std::process::exit(1);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{name}: {executions} executions, {:.1} s, {:.0}/s, 0 crashes, {} seeds, seed {seed}",
        secs,
        executions as f64 / secs,
        corpus.len()
    );
}
