//! Failure classes found by trying libre as a new user would (signals, folders, misleading
//! hints): each must end cleanly, say what happened, and leave nothing behind.

mod common;
use common::{libre, ok};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

/// SIGTERM (Slurm's scancel, a container stop) and Ctrl-C while `attack --out` streams its batch
/// file: the hidden temporary goes, the process dies of the signal, nothing else is written.
#[test]
fn signals_remove_the_temporary_output() {
    // Make sure the data and the model are cached, so the run below is busy attacking.
    ok(libre()
        .args(["-q", "data", "fetch", "mnist", "lenet5-mnist"])
        .output()
        .unwrap());
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let dir = tempfile::tempdir().unwrap();
        let bin = assert_cmd::cargo::cargo_bin("libre");
        let mut child = std::process::Command::new(bin)
            .args(["-q", "attack", "--weights", "zoo:lenet5-mnist"])
            .args(["--data", "mnist:test", "--attack", "pgd", "--eps", "0.3"])
            .args(["--steps", "100", "--batch-size", "16", "--out"])
            .arg(dir.path().join("adv.safetensors"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the temporary exists (the run is writing), then signal.
        let t0 = Instant::now();
        while std::fs::read_dir(dir.path()).unwrap().count() == 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "no temporary appeared"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "the attack ended early"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(sig), "{name}: {status:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{name} left {left:?}");
    }
}

/// An image folder says how its class names map to label ids, and a classes.txt sets the order.
#[test]
fn folder_classes_are_printed_and_can_be_ordered() {
    let dir = tempfile::tempdir().unwrap();
    for (cls, v) in [("seven", 200u8), ("one", 30u8)] {
        std::fs::create_dir(dir.path().join(cls)).unwrap();
        image::GrayImage::from_pixel(28, 28, image::Luma([v]))
            .save(dir.path().join(cls).join("a.png"))
            .unwrap();
    }
    let spec = format!("folder:{}", dir.path().display());
    let eval = || {
        let o = ok(libre()
            .args(["eval", "--weights", "zoo:lenet5-mnist", "--data", &spec])
            .output()
            .unwrap());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let e = eval();
    assert!(
        e.contains("0=one, 1=seven") && e.contains("sorted folder names"),
        "{e}"
    );
    std::fs::write(dir.path().join("classes.txt"), "seven\none\n").unwrap();
    let e = eval();
    assert!(
        e.contains("0=seven, 1=one") && e.contains("classes.txt"),
        "{e}"
    );
    std::fs::write(dir.path().join("classes.txt"), "seven\n").unwrap();
    let o = libre()
        .args(["eval", "--weights", "zoo:lenet5-mnist", "--data", &spec])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("does not list the sub-folder 'one'"), "{e}");
}

/// `libre report` has no --group-by: its errors must not suggest it (`libre metrics` does).
#[test]
fn report_errors_suggest_only_its_own_flags() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("scores.csv"), "label,score\n1,0.5\n0,0.2\n").unwrap();
    let o = libre().arg("report").arg(dir.path()).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("no column `model`") && !e.contains("--group-by"),
        "{e}"
    );
    let o = libre()
        .args(["metrics", "--group-by", "model", "--scores"])
        .arg(dir.path().join("scores.csv"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("--group-by"), "{e}");
}
