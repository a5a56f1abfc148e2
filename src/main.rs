//! The `libre` binary: a thin CLI over the library (see `src/cli/`).

mod cli;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "libre",
    version = libre::VERSION,
    about = "Bayesian fine-tuning of pretrained classifiers and LiBRe adversarial detection",
    propagate_version = true
)]
struct Cli {
    /// JSON Lines on stdout; the last line is {"type":"result","data":{...}}.
    #[arg(long, global = true)]
    json: bool,
    /// No notes or progress bars on stderr (errors still print).
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List, fetch and inspect the real data sets and weights libre can use.
    Data(cli::data::Args),
    /// Import a PyTorch checkpoint (.pt/.pth zip or legacy, .safetensors, .npz) to safetensors.
    Import(cli::import::Args),
    /// Pre-train a deterministic model (MAP with weight decay).
    Train(cli::train::TrainArgs),
    /// Convert chosen layers of a model into a Bayesian posterior.
    Convert(cli::convert::Args),
    /// Bayesian fine-tuning (BayesAdapter recipe).
    Finetune(cli::train::FinetuneArgs),
    /// Evaluate a model or Bayes ensemble on a data set.
    Eval(cli::eval::Args),
    /// Craft adversarial examples.
    Attack(cli::attack::Args),
    /// Calibrate a detector's threshold at a target false-positive rate on clean held-out data.
    Calibrate(cli::detect::CalibrateArgs),
    /// Score images with a detector and flag the adversarial-looking ones.
    Detect(cli::detect::DetectArgs),
    /// Research evaluation: attacks x models x scores from an experiment file, with a report.
    Evaluate(cli::evaluate::Args),
    /// Detection metrics (AUROC, AUPR, TPR@FPR) from a CSV of scores.
    Metrics(cli::metrics::Args),
    /// Re-render a report directory from its CSV tables.
    Report(cli::report::Args),
    /// The README's main job: MNIST + zoo LeNet5, DNN vs 1-epoch Bayesian fine-tuned BNN.
    Quickstart(cli::quickstart::Args),
    /// Print a shell completion script to stdout.
    #[command(
        after_help = "Install, e.g.:\n  libre completions bash > ~/.local/share/bash-completion/completions/libre\n  libre completions zsh > ~/.zfunc/_libre   (with fpath+=~/.zfunc before compinit)\n  libre completions fish > ~/.config/fish/completions/libre.fish"
    )]
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// Whether the command runs libtorch's parallel kernels, where OpenMP's wait policy matters
    /// ([`cli::startup::ensure_passive_omp_wait`]). The others (listing, fetching, importing, metrics, reports,
    /// merging parts) skip the re-execution and its ~0.35 s of loading libtorch a second time.
    fn computes(&self) -> bool {
        match self {
            Command::Data(_)
            | Command::Import(_)
            | Command::Metrics(_)
            | Command::Report(_)
            | Command::Completions { .. } => false,
            Command::Detect(a) => a.cmd.is_none(),
            Command::Evaluate(a) => !a.example,
            _ => true,
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let out = cli::Output {
        json: cli.json,
        quiet: cli.quiet,
    };
    match cli.command {
        Command::Data(a) => cli::data::run(a, out),
        Command::Import(a) => cli::import::run(a, out),
        Command::Metrics(a) => cli::metrics::run(a, out),
        Command::Report(a) => cli::report::run(a, out),
        Command::Train(a) => cli::train::run_train(a, out),
        Command::Finetune(a) => cli::train::run_finetune(a, out),
        Command::Quickstart(a) => cli::quickstart::run(a, out),
        Command::Convert(a) => cli::convert::run(a, out),
        Command::Eval(a) => cli::eval::run(a, out),
        Command::Attack(a) => cli::attack::run(a, out),
        Command::Evaluate(a) => cli::evaluate::run(a, out),
        Command::Calibrate(a) => cli::detect::run_calibrate(a, out),
        Command::Detect(a) => cli::detect::run_detect(a, out),
        Command::Completions { shell } => {
            // Generated in memory: clap_complete panics when its writer fails.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "libre", &mut script);
            cli::write_stdout(&script);
            Ok(())
        }
    }
}

fn main() {
    // Consumers of --json get a final error line on every failure, usage errors included.
    let json_error = |msg: &str| {
        if std::env::args_os().any(|a| a == "--json") {
            cli::write_stdout(
                format!(
                    "{}\n",
                    serde_json::json!({ "type": "error", "data": { "message": msg } })
                )
                .as_bytes(),
            );
        }
    };
    let fail = |msg: &str| -> ! {
        cli::write_stderr(format!("libre: {msg}\n").as_bytes());
        json_error(msg);
        std::process::exit(2);
    };
    // A closed stdout (`>&-`) is not refused: Rust reopens descriptors 0-2 on /dev/null before
    // `main`, which is indistinguishable from Python's `subprocess.DEVNULL` (also read-write), a
    // deliberate way to discard output.
    if let Some(msg) = cli::startup::non_utf8_argument() {
        fail(&msg);
    }
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            if e.use_stderr() {
                json_error(e.to_string().lines().next().unwrap_or_default());
                e.exit()
            }
            // --help and --version: a failed write (a full disk) is an error, not exit 0.
            if let Err(err) = e.print() {
                cli::write_failed("standard output", &err);
            }
            std::process::exit(0);
        }
    };
    if let Err(msg) = cli::startup::check_resume_flags(&matches) {
        fail(&msg);
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if cli.command.computes() {
        cli::startup::ensure_passive_omp_wait();
    }
    if !cli.quiet {
        if let Some(note) = libre::cache::root_note() {
            cli::write_stderr(format!("libre: {note}\n").as_bytes());
        }
    }
    libre::runtime::alloc::keep_freed_memory();
    cli::startup::remove_temporaries_on_signals();
    let json = cli.json;
    let flags = cli::command_flags(Cli::command(), &matches);
    if let Err(e) = run(cli) {
        let msg = cli::render_error(&e, &flags);
        cli::write_stderr(format!("libre: {msg}\n").as_bytes());
        if json {
            json_error(&msg);
        }
        let code = if e.downcast_ref::<cli::CheckFailed>().is_some() {
            1
        } else {
            2
        };
        std::process::exit(code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag and argument of every subcommand has a help line (the defaults are printed by
    /// clap where a flag has one; a flag without says what its absence means in its help).
    #[test]
    fn every_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                if a.is_hide_set() || matches!(a.get_id().as_str(), "help" | "version") {
                    continue;
                }
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                if help.trim().is_empty() {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            for s in cmd.get_subcommands() {
                walk(s, &format!("{path} {}", s.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "libre", &mut missing);
        assert!(
            missing.is_empty(),
            "{} without help:\n{}",
            missing.len(),
            missing.join("\n")
        );
    }

    /// A library setting out of its domain is shown as the flag that carried it where the command
    /// has that flag, and under its library (experiment-file) name where it does not.
    #[test]
    fn library_settings_are_shown_as_flags() {
        let e = anyhow::Error::new(libre::Error::param("mc_samples", 0, "must be at least 1"))
            .context("loading the detector");
        let flags = cli::command_flags(
            Cli::command(),
            &Cli::command()
                .try_get_matches_from(["libre", "detect", "--weights", "d", "x.png"])
                .unwrap(),
        );
        assert_eq!(
            cli::render_error(&e, &flags),
            "loading the detector: --mc-samples 0: must be at least 1"
        );
        assert_eq!(
            cli::render_error(&e, &["--fpr".to_string()]),
            "loading the detector: mc_samples = 0: must be at least 1"
        );
    }

    /// Only commands that compute re-execute for the wait policy; listing, metrics, reports and
    /// merges answer from the first start.
    #[test]
    fn only_computing_commands_reexecute() {
        let computes = |args: &[&str]| {
            Cli::try_parse_from([&["libre"], args].concat())
                .unwrap()
                .command
                .computes()
        };
        assert!(computes(&["detect", "--weights", "d", "x.png"]));
        assert!(computes(&[
            "eval",
            "--weights",
            "w",
            "--data",
            "mnist:test"
        ]));
        assert!(computes(&["evaluate", "e.toml", "--out", "o"]));
        assert!(!computes(&["detect", "merge", "a.csv", "--out", "b.csv"]));
        assert!(!computes(&["evaluate", "--example"]));
        assert!(!computes(&["metrics", "--scores", "s.csv"]));
        assert!(!computes(&["data", "list"]));
        assert!(!computes(&["report", "r"]));
        assert!(!computes(&["completions", "bash"]));
        assert!(computes(&[
            "detect",
            "--weights",
            "d",
            "--files-from",
            "l.txt"
        ]));
    }
}
