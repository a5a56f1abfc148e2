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
mod output;
mod paths;
pub mod quickstart;
pub mod report;
pub mod startup;
pub mod train;

pub use output::{write_failed, write_stderr, write_stdout, Output};
pub use paths::{
    check_out_dir, check_weights_arg, dir_entries, refuse_output_over_inputs, resolved, same_file,
};

/// An error meaning "the computation ran but a requested check failed": exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CheckFailed(pub String);

/// Resolve `--device`, printing the choice when it was `auto`.
pub fn resolve_device(spec: &str, out: &Output) -> anyhow::Result<tch::Device> {
    let parsed: libre::runtime::device::DeviceSpec = spec.parse()?;
    let d = libre::runtime::device::resolve(parsed)?;
    if parsed == libre::runtime::device::DeviceSpec::Auto {
        out.note(format!(
            "device: auto -> {}",
            libre::runtime::device::name(d)
        ));
    }
    Ok(d)
}

/// An error and its causes on one line (as `{e:#}`), with each library setting out of its domain
/// shown as the flag that carried it (`mc_samples = 0: ...` becomes `--mc-samples 0: ...`) and
/// each missing setting as the flag that gives it (`(set arch)` becomes `(pass --model)`), where
/// the command has such a flag. The library names its settings, never flags: the same error
/// reaches `libre evaluate` users under their experiment file's key.
pub fn render_error(e: &anyhow::Error, flags: &[String]) -> String {
    render_links(e.chain(), flags)
}

/// [`render_error`] for a library error on its own: a skipped image's row in `libre detect`
/// explains itself as the command's error message would.
pub fn render_lib_error(e: &libre::Error, flags: &[String]) -> String {
    let mut links: Vec<&(dyn std::error::Error + 'static)> = vec![e];
    while let Some(s) = links.last().and_then(|l| l.source()) {
        links.push(s);
    }
    render_links(links.into_iter(), flags)
}

/// The long flags of a command's argument struct (`--resize`, ...), for [`render_lib_error`].
pub fn flags_of<A: clap::Args>() -> Vec<String> {
    A::augment_args(clap::Command::new("flags"))
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect()
}

fn render_links<'a>(
    links: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>,
    flags: &[String],
) -> String {
    // Settings whose flag has another name than the setting.
    const ALIASES: &[(&str, &str)] = &[("arch", "--model"), ("family", "--posterior")];
    let flag_of = |name: &str| {
        let flag = ALIASES.iter().find(|(n, _)| *n == name).map_or_else(
            || format!("--{}", name.replace('_', "-")),
            |(_, f)| f.to_string(),
        );
        flags.contains(&flag).then_some(flag)
    };
    let as_flag = |name: &str, value: &str, constraint: &str| {
        flag_of(name).map(|flag| format!("{flag} {value}: {constraint}"))
    };
    links
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
                Some(libre::Error::Missing { name, why }) => {
                    flag_of(name).map(|flag| format!("{why} (pass {flag})"))
                }
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
pub fn parse_precision(s: &str) -> Result<libre::runtime::precision::Precision, libre::Error> {
    s.parse()
}

/// A note where a model put at precision `p` on `device` will be slow: bf16 on a CPU without
/// native bf16.
pub fn note_precision(p: libre::runtime::precision::Precision, device: tch::Device, out: &Output) {
    if p == libre::runtime::precision::Precision::Bf16
        && device == tch::Device::Cpu
        && !libre::runtime::device::cpu_has_native_bf16()
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
