//! The `libre` binary: a thin CLI over the library (see `src/cli/`).

mod cli;

use clap::{Parser, Subcommand};

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
    }
}

fn main() {
    let cli = Cli::parse();
    let json = cli.json;
    if let Err(e) = run(cli) {
        eprintln!("libre: {e:#}");
        if json {
            // Consumers of --json always get a final line, also on failure.
            println!(
                "{}",
                serde_json::json!({ "type": "error", "data": { "message": format!("{e:#}") } })
            );
        }
        let code = if e.downcast_ref::<cli::CheckFailed>().is_some() {
            1
        } else {
            2
        };
        std::process::exit(code);
    }
}
