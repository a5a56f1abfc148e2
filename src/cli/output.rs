//! Where the commands' output goes: results on stdout (JSON Lines with `--json`), notes and
//! progress bars on stderr, and what a failed write to either does.

use serde_json::{json, Value};
use std::io::IsTerminal;

/// Global output settings shared by every subcommand.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
    pub quiet: bool,
}

impl Output {
    /// A note for humans on stderr (suppressed by --quiet).
    pub fn note(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            let mut line = msg.as_ref().to_string();
            line.push('\n');
            write_stderr(line.as_bytes());
        }
    }

    /// A JSON Lines event on stdout (only with --json).
    pub fn event(&self, kind: &str, data: Value) {
        if self.json {
            write_stdout(format!("{}\n", json!({ "type": kind, "data": data })).as_bytes());
        }
    }

    /// The final result: the JSON result line with --json, otherwise the human rendering.
    pub fn result(&self, data: Value, human: impl FnOnce() -> String) {
        if self.json {
            write_stdout(format!("{}\n", json!({ "type": "result", "data": data })).as_bytes());
        } else {
            let mut text = human();
            if !text.is_empty() {
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                write_stdout(text.as_bytes());
            }
        }
    }

    /// A progress bar on stderr, hidden unless stderr is a terminal and not --quiet.
    pub fn progress(&self, len: u64, what: &str) -> indicatif::ProgressBar {
        if self.quiet || !std::io::stderr().is_terminal() {
            return indicatif::ProgressBar::hidden();
        }
        let pb = indicatif::ProgressBar::new(len);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
            )
            .expect("checked: the template is fixed here and valid")
            .progress_chars("=> "),
        );
        pb.set_prefix(what.to_string());
        pb
    }
}

/// Writes to standard output. `println!` panics when the write fails (a full disk behind
/// `> FILE`); here a failed write ends the run: a broken pipe (the reader went away, `| head`)
/// quietly, anything else with the error on stderr and exit status 2. Temporaries of unfinished
/// outputs are removed first, as on a signal.
pub fn write_stdout(bytes: &[u8]) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(bytes).and_then(|()| o.flush()) {
        write_failed("standard output", &e);
    }
}

/// Writes to standard error, like [`write_stdout`].
pub fn write_stderr(bytes: &[u8]) {
    use std::io::Write;
    let mut o = std::io::stderr().lock();
    if let Err(e) = o.write_all(bytes).and_then(|()| o.flush()) {
        write_failed("standard error", &e);
    }
}

/// Ends the process after a failed write to `stream` (see [`write_stdout`]).
pub fn write_failed(stream: &str, e: &std::io::Error) -> ! {
    use std::io::Write;
    libre::cleanup::remove_all();
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    // Best effort: when standard error is the stream that failed, this fails too.
    let _ = writeln!(std::io::stderr(), "libre: error writing to {stream}: {e}");
    std::process::exit(2);
}
