// The body of every fuzz target, shared by the libFuzzer binaries (fuzz/fuzz_targets/*.rs, via
// `#[path]`) and the stable-Rust corpus replay test (tests/fuzz_corpus.rs), so the two cannot
// drift. Each function feeds one input to exactly the entry points the CLI uses and ignores the
// result: any `Err` is a correct answer to a bad file; a panic, hang or huge allocation is a bug.
// See docs/fuzzing.md.

#![allow(dead_code)] // each fuzz binary uses one of these

use std::cell::RefCell;
use std::path::{Path, PathBuf};

/// The target names, in the order of docs/fuzzing.md; `fuzz/corpus/<name>/` holds each corpus.
pub const TARGETS: [&str; 6] = [
    "pickle",
    "torch",
    "numpy",
    "safetensors",
    "image_folder",
    "scores_csv",
];

/// Runs the target called `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "pickle" => pickle(data),
        "torch" => torch(data),
        "numpy" => numpy(data),
        "safetensors" => safetensors(data),
        "image_folder" => image_folder(data),
        "scores_csv" => scores_csv(data),
        other => panic!("unknown fuzz target {other:?}"),
    }
}

/// The pickle VM on its own (every value it returns is also formatted, which walks the whole
/// tree), then the MNIST pickle reader of the `mnist` data source (gzip + pickle + NumPy arrays).
pub fn pickle(data: &[u8]) {
    if let Ok(v) = libre::weights::import::pickle::loads(data.to_vec()) {
        let _ = format!("{v:?} {}", v.type_name());
    }
    let _ = libre::weights::import::read_mnist_pickle(data);
}

/// `libre import` / `--init` on a `.pt` file: format detection, then the torch zip or legacy
/// reader, with default options and with `--key state_dict --strip-prefix module.`.
pub fn torch(data: &[u8]) {
    state_dict("checkpoint.pt", data);
    let opts = libre::weights::import::ImportOptions {
        key: Some("state_dict".into()),
        strip_prefix: Some("module.".into()),
    };
    let _ = libre::weights::import::load_state_dict_bytes(
        Path::new("checkpoint.pt"),
        data.to_vec(),
        &opts,
    );
}

/// `libre import` on `.npy` / `.npz` files (the same dispatcher; the name gives the npy stem).
pub fn numpy(data: &[u8]) {
    state_dict("arrays.npy", data);
}

/// A safetensors batch file as `--data FILE.safetensors` opens it (header, metadata, labels, the
/// first batch), and the same bytes as a safetensors state dict (`libre import`, `--init`).
pub fn safetensors(data: &[u8]) {
    state_dict("weights.safetensors", data);
    with_scratch(|dir| {
        let path = dir.join("batch.safetensors");
        if std::fs::write(&path, data).is_err() {
            return;
        }
        if let Ok(ds) =
            libre::data::open(path.to_str().expect("utf-8 temp path"), None, &mut |_| {})
        {
            let _ = (ds.num_classes(), ds.class_names(), ds.labels());
            let _ = ds.batch(0, ds.len().min(8));
        }
    });
}

/// `--data folder:DIR` on a folder holding one image: the loader decodes the first image for the
/// data set's shape, then a batch decodes it again. The extension (which picks the decoder, as
/// for real folders) follows the file's magic bytes, so corpus files are plain image files.
pub fn image_folder(data: &[u8]) {
    const EXTS: [&str; 3] = ["png", "jpg", "bmp"];
    let ext = if data.starts_with(b"\x89PNG") {
        "png"
    } else if data.starts_with(b"\xff\xd8") {
        "jpg"
    } else if data.starts_with(b"BM") {
        "bmp"
    } else {
        EXTS[data.len() % EXTS.len()]
    };
    with_scratch(|dir| {
        let class = dir.join("folder").join("class_a");
        if std::fs::create_dir_all(&class).is_err() {
            return;
        }
        for e in EXTS {
            let _ = std::fs::remove_file(class.join(format!("img.{e}")));
        }
        if std::fs::write(class.join(format!("img.{ext}")), data).is_err() {
            return;
        }
        let spec = format!("folder:{}", dir.join("folder").display());
        if let Ok(ds) = libre::data::open(&spec, None, &mut |_| {}) {
            let _ = ds.batch(0, ds.len());
        }
    });
}

/// `libre metrics --scores FILE.csv` (plain, grouped, `--subset successful`) and the fixed-schema
/// tables a report directory is rebuilt from.
pub fn scores_csv(data: &[u8]) {
    use libre_reports::tables::{self, ScoreCsvSpec, Subset};
    let path = Path::new("scores.csv");
    let specs = [
        ScoreCsvSpec::default(),
        ScoreCsvSpec {
            group_by: vec!["model".into(), "attack".into(), "eps".into()],
            subset: Subset::Successful,
            ..ScoreCsvSpec::default()
        },
    ];
    for spec in &specs {
        let _ = tables::read_scores_from(path, data, spec);
    }
    let _ = tables::read_rows_from::<tables::ClassificationRow, _>(path, data);
    let _ = tables::read_rows_from::<tables::ReliabilityRow, _>(path, data);
    let _ = tables::read_rows_from::<tables::McCurveRow, _>(path, data);
    let _ = tables::read_rows_from::<tables::DetectionRow, _>(path, data);
}

fn state_dict(name: &str, data: &[u8]) {
    if let Ok(sd) = libre::weights::import::load_state_dict_bytes(
        Path::new(name),
        data.to_vec(),
        &libre::weights::import::ImportOptions::default(),
    ) {
        let _ = (sd.len(), sd.num_params());
    }
}

thread_local! {
    // One scratch directory per thread (the replay test runs targets on several threads), made
    // once: the path-based loaders get a file that is overwritten on every input.
    static SCRATCH: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

fn with_scratch(f: impl FnOnce(&Path)) {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.is_none() {
            *s = Some(tempfile::tempdir().expect("a scratch directory"));
        }
        let dir: PathBuf = s.as_ref().expect("just made").path().to_path_buf();
        f(&dir)
    })
}
