//! What the binary does around a command, before and after it runs: refusing arguments that are
//! not UTF-8 and flags `--resume` would ignore, re-executing with OpenMP's passive wait policy,
//! and removing unfinished outputs on a signal. `main.rs` calls these; the commands never do.

/// libgomp (libtorch's OpenMP runtime) busy-waits between parallel regions by default, which on
/// a machine with any other CPU load makes every forward ~10x slower (issue 14's measurement:
/// 1060 vs 100 ms). It reads OMP_WAIT_POLICY once, when libtorch is loaded at process start, so
/// the binary re-executes itself with the passive policy unless the user chose one. The second
/// start costs ~0.35 s on the 2-core machines (libtorch registering its operators again), so it
/// happens only for commands that compute, after the command line parsed (`--help`, `--version`
/// and usage errors answer at once); a user who sets OMP_WAIT_POLICY skips it.
pub fn ensure_passive_omp_wait() {
    use std::os::unix::process::CommandExt;
    const MARK: &str = "LIBRE_OMP_REEXEC";
    if std::env::var_os("OMP_WAIT_POLICY").is_some() || std::env::var_os(MARK).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .env(MARK, "1")
        .exec();
    // exec only returns on failure: carry on with the default policy.
    super::write_stderr(
        format!("libre: note: could not re-execute with OMP_WAIT_POLICY=PASSIVE ({err})\n")
            .as_bytes(),
    );
}

/// `--resume` continues a run with the settings in its config.json: flags that would silently be
/// ignored are refused, by name.
pub fn check_resume_flags(m: &clap::ArgMatches) -> Result<(), String> {
    let Some((name, sub)) = m.subcommand() else {
        return Ok(());
    };
    if !matches!(name, "train" | "finetune")
        || sub.get_one::<std::path::PathBuf>("resume").is_none()
    {
        return Ok(());
    }
    let ignored: Vec<String> = sub
        .ids()
        .map(|id| id.as_str())
        // Argument groups (the flattened structs) are listed too: only flags are lowercase.
        .filter(|id| id.starts_with(|c: char| c.is_ascii_lowercase()))
        .filter(|id| !matches!(*id, "resume" | "device" | "json" | "quiet"))
        .filter(|id| sub.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
        .map(|id| format!("--{}", id.replace('_', "-")))
        .collect();
    if ignored.is_empty() {
        return Ok(());
    }
    Err(format!(
        "--resume continues the run with the settings saved in its config.json; these flags \
         would be ignored: {} (drop them, or start a new run with --out)",
        ignored.join(", ")
    ))
}

/// On SIGINT, SIGTERM or SIGHUP, remove the hidden temporaries of the outputs being written (see
/// `libre::cleanup`), then die of the same signal, so that shells and schedulers (Slurm records
/// the signal of a cancelled task) see what happened.
pub fn remove_temporaries_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // Without a handler the default action still ends the process; only the cleanup is lost.
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            libre::cleanup::remove_all();
            let _ = signal_hook::low_level::emulate_default_handler(sig);
            std::process::exit(128 + sig);
        }
    });
}

/// The first argument that is not valid UTF-8, named (with the flag before it) and escaped
/// losslessly. libre's paths and values are UTF-8: a file named otherwise would reach JSON output,
/// CSV rows and error messages mangled, so it is refused before any work.
pub fn non_utf8_argument() -> Option<String> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let i = args.iter().position(|a| a.to_str().is_none())?;
    let shown = libre::detect::input::os_text(&args[i]);
    let flag = i
        .checked_sub(1)
        .and_then(|j| args[j].to_str())
        .filter(|f| f.starts_with('-') && !f.contains('='));
    Some(match flag {
        Some(f) => format!(
            "{f} '{shown}': not valid UTF-8; libre takes UTF-8 paths and values (rename the file, \
             or use a symbolic link with a UTF-8 name)"
        ),
        None => format!(
            "argument '{shown}': not valid UTF-8; libre takes UTF-8 paths and values (rename the \
             file, or use a symbolic link with a UTF-8 name)"
        ),
    })
}
