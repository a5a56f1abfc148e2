//! libFuzzer target `torch`: the body lives in fuzz/targets.rs, shared with tests/fuzz_corpus.rs
//! (which replays fuzz/corpus/torch/ on stable Rust in CI), so the two cannot drift.
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::torch(data));
