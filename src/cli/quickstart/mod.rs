//! `libre quickstart`: the README's main job on the embedded default (MNIST + the zoo LeNet5).
//!
//! Default: the LiBRe demonstration. Fine-tunes LiBRe (linear1 as a 20-member ensemble, the
//! anchored objective that the study in docs/results.md selected on validation data), attacks the
//! first 1000 test digits white-box (FGSM, PGD and CW at eps 0.3) on the DNN and on the BNN,
//! scores every image with the DNN's msp/entropy and LiBRe's feature variance (and more), writes
//! the report (`OUT/report/index.html`, `scores.csv`, `summary.json`) and prints the AUROC table.
//!
//! `--bayesadapter`: the BayesAdapter part: all layers mean-field, one epoch, and the 20-sample
//! Bayes ensemble's accuracy / NLL / ECE next to the DNN's.

mod bayesadapter;
mod demo;

use super::args::DeviceArg;
use super::Output;
use libre::train;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run directory: the fine-tuned model, its logs, and the report in OUT/report.
    #[arg(long, default_value = "runs/quickstart")]
    pub out: PathBuf,
    /// Fine-tuning epochs.
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// LiBRe: training images (the first N of mnist:train[0:50000]).
    #[arg(long, default_value_t = 20000)]
    pub train_images: usize,
    /// LiBRe: test images to attack and score (the first N of mnist:test).
    #[arg(long, default_value_t = 1000)]
    pub test_images: usize,
    /// Run the BayesAdapter part instead: all-layer mean-field fine-tuning and the accuracy /
    /// calibration table.
    #[arg(long)]
    pub bayesadapter: bool,
    /// MC samples of the Bayes ensemble.
    #[arg(long, default_value_t = 20)]
    pub mc_samples: usize,
    /// Seed of training, attacks and weight sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// A training progress bar: images done, running loss and accuracy.
struct Obs<'a>(&'a indicatif::ProgressBar);

impl train::TrainObserver for Obs<'_> {
    fn batch(&mut self, _e: usize, done: usize, _t: usize, loss: f64, acc: f64) {
        self.0.set_position(done as u64);
        self.0
            .set_message(format!("loss {loss:.4} acc {:.2}%", 100.0 * acc));
    }
}

/// `libre quickstart`.
/// Fine-tunes `model` on `data` as a fresh run in `run`, with a progress bar labelled `label`.
fn fine_tune(
    model: &mut dyn libre::models::BayesModel,
    data: &libre::data::Dataset,
    cfg: &train::TrainConfig,
    run: &libre::jobs::run::RunDir,
    out: &Output,
    label: &str,
) -> anyhow::Result<Vec<train::EpochLog>> {
    let pb = out.progress(data.len() as u64, label);
    let logs = train::fit(
        model,
        data,
        None,
        cfg,
        run,
        train::RunStart::New,
        &mut Obs(&pb),
    )?;
    pb.finish_and_clear();
    Ok(logs)
}

pub fn run(args: Args, out: Output) -> anyhow::Result<()> {
    if args.bayesadapter {
        bayesadapter::run_bayesadapter(args, out)
    } else {
        demo::run_libre(args, out)
    }
}
