//! Deterministic fuzzing of the two parsers that take untrusted input (SPEC §11): the config
//! parser and the IPC request decoder. Random bytes, and valid inputs with random mutations
//! (byte flips, truncations, duplications, splices); every input must return `Ok` or `Err`,
//! never panic, and finish promptly. A fixed seed keeps runs reproducible; the failing input is
//! printed on panic.

use crate::config::Config;
use crate::ipc::decode_request;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const CONFIG_SEEDS: &[&str] = &[
    include_str!("../../config-examples/loop-backend.toml"),
    include_str!("../../config-examples/legacy-0.3.toml"),
    include_str!("../../config-examples/many-workspaces.toml"),
    "[daemon]\nreconcile_interval = \"1h30m\"\n[[workspace]]\npath = \"/a\"\nkeep = \"30d\"\nallow_users = [\"x\"]\n",
];

const REQUEST_SEEDS: &[&str] = &[
    r#"{"v":1,"op":"checkpoint","workspace":"/home/a","snapshot":"c1","message":"m","metadata":{"k":[1,2]},"pin":true}"#,
    r#"{"v":1,"op":"rollback","workspace":"ws-abcdef","snapshot":"c1","force":false}"#,
    r#"{"v":1,"op":"delete","snapshot":"../../x"}"#,
    r#"{"v":1,"op":"diff","workspace":"/w","from":"a","to":null}"#,
    r#"{"v":1,"op":"list"}"#,
    r#"{"v":1,"op":"apply","check":true,"prune":false}"#,
];

const TOKENS: &[&[u8]] = &[
    b"\"",
    b"[",
    b"]",
    b"{",
    b"}",
    b"=",
    b"\n",
    b"[[workspace]]",
    b"\\u0000",
    b"\xff",
    b"9999999999999999999999",
    b"-1",
    b"\"..\"",
    b"true",
    b"null",
    b"#",
    b"'",
    b"\"\"\"",
    b"0x",
    b"1e999",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(6) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => v.truncate(rng.below(v.len())),
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let i = rng.below(v.len() + 1);
                v.splice(i..i, t.iter().copied());
            }
            3 if !v.is_empty() => {
                let a = rng.below(v.len());
                let b = (a + rng.below(64)).min(v.len());
                let chunk = v[a..b].to_vec();
                let i = rng.below(v.len() + 1);
                v.splice(i..i, chunk);
            }
            4 if !v.is_empty() => {
                let a = rng.below(v.len());
                let b = (a + rng.below(16)).min(v.len());
                v.drain(a..b);
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v
}

fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    (0..rng.below(200)).map(|_| rng.next() as u8).collect()
}

fn run(name: &str, n: usize, seeds: &[&str], check: impl Fn(&[u8])) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let start = Instant::now();
    for i in 0..n {
        let input = if i % 4 == 0 {
            random_bytes(&mut rng)
        } else {
            mutate(&mut rng, seeds[i % seeds.len()].as_bytes())
        };
        let t = Instant::now();
        if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
            panic!(
                "{name}: panic on input #{i}: {:?}",
                String::from_utf8_lossy(&input)
            );
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{name}: input #{i} took {:?}: {:?}",
            t.elapsed(),
            String::from_utf8_lossy(&input)
        );
    }
    eprintln!("{name}: {n} inputs in {:?}", start.elapsed());
}

#[test]
fn config_parser_never_panics() {
    let path = Path::new("/fuzz/config.toml");
    run("config", 6000, CONFIG_SEEDS, |input| {
        let text = String::from_utf8_lossy(input).into_owned();
        let _ = Config::from_sources(path, &[(PathBuf::from(path), text)]);
    });
}

#[test]
fn ipc_decoder_never_panics() {
    run("ipc", 20_000, REQUEST_SEEDS, |input| {
        let _ = decode_request(input);
    });
}

#[test]
fn seeds_are_valid_so_mutations_start_from_real_inputs() {
    for s in REQUEST_SEEDS {
        decode_request(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    for s in CONFIG_SEEDS {
        let p = Path::new("/fuzz/config.toml");
        Config::from_sources(p, &[(PathBuf::from(p), s.to_string())])
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
