//! The library names its settings, never the CLI's flags (docs/design.md, "Errors"): a
//! `libre evaluate` user configures it through an experiment file and must not be told about a
//! `--flag` they never typed. The CLI turns `Error::Param`'s setting name into the flag
//! (`cli::render_error`). This test reads every library source file outside `src/cli/` and
//! `src/main.rs` and fails on a string literal that contains `--` followed by a letter.
//!
//! Allowed: doc and line comments (they explain, to developers), and the few literals listed in
//! `ALLOWED` with the reason each is not a message to a user of the library.

use std::path::{Path, PathBuf};

/// (file, literal fragment, why it may name a flag).
const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "src/cache.rs",
        "--no-deps",
        "pip's own flags: arguments of the pip child process",
    ),
    (
        "src/cache.rs",
        "--no-binary",
        "pip's own flags: arguments of the pip child process",
    ),
    (
        "src/cache.rs",
        "--only-binary",
        "pip's own flags: arguments of the pip child process",
    ),
    (
        "src/cache.rs",
        "--quiet",
        "pip's own flags: arguments of the pip child process",
    ),
    (
        "src/jobs/shard.rs",
        "--array=",
        "sbatch's flag, the one the user typed to submit the array",
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The string literals of one source line (after stripping a trailing `//` comment), as the
/// text between unescaped double quotes. Raw strings and multi-line literals are read by
/// `literals_of_file`, which joins continuation lines first.
fn literals(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        match (&mut cur, c) {
            (None, '/') if chars.peek() == Some(&'/') => break,
            (None, '\'') => {
                // A char literal ('"' included) or a lifetime: skip a quoted char.
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with("\\\"'") || rest.starts_with("\"'") {
                    chars.nth(if rest.starts_with('\\') { 2 } else { 1 });
                }
            }
            (None, '"') => cur = Some(String::new()),
            (Some(s), '\\') => {
                if let Some(n) = chars.next() {
                    s.push('\\');
                    s.push(n);
                }
            }
            (Some(s), '"') => {
                out.push(std::mem::take(s));
                cur = None;
            }
            (Some(s), c) => s.push(c),
            (None, _) => {}
        }
    }
    if let Some(s) = cur {
        out.push(s); // a literal continued on the next line: its first part
    }
    out
}

fn names_a_flag(s: &str) -> bool {
    s.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'-' && w[1] == b'-' && w[2].is_ascii_lowercase())
}

#[test]
fn no_library_message_names_a_cli_flag() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut offences = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if rel.starts_with("src/cli/") || rel == "src/main.rs" {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") || code.starts_with("#[doc") {
                continue;
            }
            for lit in literals(line) {
                let allowed = ALLOWED
                    .iter()
                    .any(|(f, frag, _)| *f == rel && lit.contains(frag));
                if names_a_flag(&lit) && !allowed {
                    offences.push(format!("{rel}:{}: \"{lit}\"", i + 1));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "library string literals naming a CLI flag (return Error::param with the setting's \
         name instead; the CLI adds the flag):\n{}",
        offences.join("\n")
    );
}

/// The scanner itself: it finds flags in literals, not in comments, char literals or code.
#[test]
fn the_scanner_sees_literals_only() {
    assert!(literals(r#"f("use --fpr") // --mc-samples"#)
        .iter()
        .any(|l| names_a_flag(l)));
    assert!(!literals(r#"let x = a--b; // "--fpr""#)
        .iter()
        .any(|l| names_a_flag(l)));
    assert_eq!(
        literals(r#"s == '"' && t == "--x""#),
        vec!["--x".to_string()]
    );
    assert!(!names_a_flag("x -- y --1"));
    assert!(names_a_flag("--mc-samples"));
}
