//! The `libre` command line: shared options, output conventions and one module per subcommand.
//!
//! Conventions (ripgrep / hyperfine style): results on stdout, notes and progress bars on stderr
//! (bars only when stderr is a terminal and not `--quiet`), `--json` prints JSON Lines with the last
//! line `{"type":"result","data":{...}}`, exit codes 0 ok / 1 a check failed / 2 error.

pub mod attack;
pub mod convert;
pub mod data;
pub mod detect;
pub mod eval;
pub mod evaluate;
pub mod import;
pub mod metrics;
pub mod quickstart;
pub mod report;
pub mod train;

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
            eprintln!("{}", msg.as_ref());
        }
    }

    /// A JSON Lines event on stdout (only with --json).
    pub fn event(&self, kind: &str, data: Value) {
        if self.json {
            println!("{}", json!({ "type": kind, "data": data }));
        }
    }

    /// The final result: the JSON result line with --json, otherwise the human rendering.
    pub fn result(&self, data: Value, human: impl FnOnce() -> String) {
        if self.json {
            println!("{}", json!({ "type": "result", "data": data }));
        } else {
            let text = human();
            if !text.is_empty() {
                print!("{text}");
                if !text.ends_with('\n') {
                    println!();
                }
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
            .unwrap()
            .progress_chars("=> "),
        );
        pb.set_prefix(what.to_string());
        pb
    }
}

/// An error meaning "the computation ran but a requested check failed": exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CheckFailed(pub String);

/// Resolve `--device`, printing the choice when it was `auto`.
pub fn resolve_device(spec: &str, out: &Output) -> anyhow::Result<tch::Device> {
    let parsed: libre::device::DeviceSpec = spec.parse()?;
    let d = libre::device::resolve(parsed)?;
    if parsed == libre::device::DeviceSpec::Auto {
        out.note(format!("device: auto -> {}", libre::device::name(d)));
    }
    Ok(d)
}

/// clap's parser of `--mc-draws`.
pub fn parse_mc_draws(s: &str) -> Result<libre::bayes::McDraws, libre::Error> {
    s.parse()
}

/// clap's parser of `--precision`.
pub fn parse_precision(s: &str) -> Result<libre::precision::Precision, libre::Error> {
    s.parse()
}

/// A note where a model put at precision `p` on `device` will be slow: bf16 on a CPU without
/// native bf16.
pub fn note_precision(p: libre::precision::Precision, device: tch::Device, out: &Output) {
    if p == libre::precision::Precision::Bf16
        && device == tch::Device::Cpu
        && !libre::device::cpu_has_native_bf16()
    {
        out.note(
            "this CPU has no AVX512-BF16 / AMX: libtorch emulates bf16, expect it slower than f32",
        );
    }
}

/// A fetch note printer for library calls that may download.
pub fn fetch_note(out: &Output) -> impl FnMut(&str) + '_ {
    move |m: &str| out.note(m)
}
