//! The `libre` command line: shared options, output conventions and one module per subcommand.
//!
//! Conventions (ripgrep / hyperfine style): results on stdout, notes and progress bars on stderr
//! (bars only when stderr is a terminal and not `--quiet`), `--json` prints JSON Lines with the last
//! line `{"type":"result","data":{...}}`, exit codes 0 ok / 1 a check failed / 2 error.

pub mod args;
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
pub mod startup;
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

/// An error and its causes on one line (as `{e:#}`), with each library setting out of its domain
/// shown as the flag that carried it (`mc_samples = 0: ...` becomes `--mc-samples 0: ...`) where
/// the command has such a flag. The library names its settings, never flags: the same error
/// reaches `libre evaluate` users under their experiment file's key.
pub fn render_error(e: &anyhow::Error, flags: &[String]) -> String {
    let as_flag = |name: &str, value: &str, constraint: &str| {
        let flag = format!("--{}", name.replace('_', "-"));
        flags
            .contains(&flag)
            .then(|| format!("{flag} {value}: {constraint}"))
    };
    e.chain()
        .map(|link| {
            let flagged = match link.downcast_ref::<libre::Error>() {
                Some(libre::Error::Param {
                    name,
                    value,
                    constraint,
                }) => as_flag(name, value, constraint),
                Some(libre::Error::Report(libre_reports::ReportError::InvalidArgument {
                    name,
                    value,
                    constraint,
                })) => as_flag(name, value, constraint),
                _ => None,
            };
            flagged.unwrap_or_else(|| link.to_string())
        })
        .collect::<Vec<_>>()
        .join(": ")
}

/// The long flags of the subcommand of `root` that ran (and its parents'), so that a library error about a
/// setting can be shown as the flag that carried it.
pub fn command_flags(root: clap::Command, matches: &clap::ArgMatches) -> Vec<String> {
    let longs = |c: &clap::Command| -> Vec<String> {
        c.get_arguments()
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect()
    };
    let mut cmd = root;
    let mut flags = longs(&cmd);
    let mut m = matches;
    while let Some((name, sub)) = m.subcommand() {
        match cmd.find_subcommand(name) {
            Some(c) => cmd = c.clone(),
            None => break,
        }
        flags.extend(longs(&cmd));
        m = sub;
    }
    flags
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

/// Whether `a` and `b` name the same existing file (device and inode: symbolic and hard links,
/// `./x` and `x` included).
pub fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// `p` made absolute with its longest existing prefix resolved (symbolic links, `..`), so that
/// paths which may not exist yet can be compared.
pub fn resolved(p: &std::path::Path) -> std::path::PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut rest = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(mut c) = cur.canonicalize() {
            c.extend(rest.iter().rev());
            return c;
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                cur = parent;
            }
            _ => return abs,
        }
    }
}

/// Refuses the output `out` (given as `flag`) when it is one of `inputs` (`(what, path)`), or a
/// directory that holds one: writing it would destroy what the command reads.
pub fn refuse_output_over_inputs(
    flag: &str,
    out: &std::path::Path,
    inputs: &[(&str, &std::path::Path)],
) -> anyhow::Result<()> {
    let out_r = resolved(out);
    for (what, inp) in inputs {
        if same_file(out, inp) || resolved(inp) == out_r {
            anyhow::bail!(
                "{flag} {}: that is {what}, which would be overwritten; choose another output path",
                out.display()
            );
        }
        if resolved(inp).starts_with(&out_r) {
            anyhow::bail!(
                "{flag} {}: it holds {what} ({}), which would be overwritten; choose another \
                 output path",
                out.display(),
                inp.display()
            );
        }
    }
    Ok(())
}

/// Checks a directory output before any work: a file there is refused, and so is a directory
/// holding anything but an earlier output of the same command unless `force`. `foreign` lists
/// the entries of an existing directory that the command did not write.
pub fn check_out_dir(
    flag: &str,
    dir: &std::path::Path,
    foreign: &dyn Fn(&std::path::Path) -> Vec<String>,
    force: bool,
) -> anyhow::Result<()> {
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(()); // created later
    };
    if !meta.is_dir() {
        anyhow::bail!(
            "{flag} {}: exists and is not a directory; name a new or empty directory",
            dir.display()
        );
    }
    if force {
        return Ok(());
    }
    let mut names = foreign(dir);
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    let n = names.len();
    names.truncate(5);
    anyhow::bail!(
        "{flag} {}: the directory holds files that are not an earlier output of this command \
         ({}{}); choose a new or empty directory, or pass --force to write into it anyway",
        dir.display(),
        names.join(", "),
        if n > 5 {
            format!(" and {} more", n - 5)
        } else {
            String::new()
        }
    );
}

/// The names of the entries of `dir` (none when it cannot be read: the command's own error
/// comes later and names it).
pub fn dir_entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Refuses `--weights` naming a directory (the loaders would say "no such file").
pub fn check_weights_arg(weights: &str) -> anyhow::Result<()> {
    if std::path::Path::new(weights).is_dir() {
        anyhow::bail!(
            "--weights {weights}: is a directory; name a checkpoint or detector file \
             (.safetensors, e.g. RUN_DIR/model.safetensors) or zoo:NAME"
        );
    }
    Ok(())
}
