//! libFuzzer target `scores_csv`: the body lives in fuzz/targets.rs, shared with tests/fuzz_corpus.rs
//! (which replays fuzz/corpus/scores_csv/ on stable Rust in CI), so the two cannot drift.
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::scores_csv(data));
