//! Replays every committed fuzz input (fuzz/corpus/<target>/*) through the same functions the
//! cargo-fuzz targets call (fuzz/targets.rs is compiled into both), on stable Rust and without
//! libFuzzer: CI checks in seconds that no input that once crashed a decoder, and no seed,
//! panics again. Finding new inputs is `cargo +nightly fuzz run` (docs/fuzzing.md).

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::Path;

fn replay(target: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        // A panic names the input; the harness reports it as this test's failure.
        let r = std::panic::catch_unwind(|| targets::run(target, &data));
        assert!(
            r.is_ok(),
            "fuzz target {target} panicked on {}",
            f.display()
        );
    }
}

#[test]
fn every_target_has_a_test() {
    assert_eq!(
        targets::TARGETS,
        [
            "pickle",
            "torch",
            "numpy",
            "safetensors",
            "image_folder",
            "scores_csv"
        ]
    );
}

#[test]
fn pickle() {
    replay("pickle");
}

#[test]
fn torch() {
    replay("torch");
}

#[test]
fn numpy() {
    replay("numpy");
}

#[test]
fn safetensors() {
    replay("safetensors");
}

#[test]
fn image_folder() {
    replay("image_folder");
}

#[test]
fn scores_csv() {
    replay("scores_csv");
}
