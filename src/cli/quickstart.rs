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

use super::Output;
use libre::bayes::prior::PriorConfig;
use libre::bayes::{Family, ForwardMode, LayerSelection, McSampling, PosteriorConfig};
use libre::detect::{LibreConfig, ObjectiveKind};
use libre::eval::{self, EvalOptions};
use libre::run::{Provenance, RunDir};
use libre::train::{self, Augment, TrainConfig};
use serde_json::json;
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
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
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

pub fn run(args: Args, out: Output) -> anyhow::Result<()> {
    if args.bayesadapter {
        run_bayesadapter(args, out)
    } else {
        run_libre(args, out)
    }
}

/// The experiment the demonstration evaluates.
fn experiment(model: &std::path::Path, test_images: usize) -> String {
    format!(
        r#"title = "libre quickstart: zoo LeNet5 (DNN) vs LiBRe on MNIST"
data = "mnist:test[0:{test_images}]"
seed = 0
bootstrap = 200
[[model]]
name = "dnn"
weights = "zoo:lenet5-mnist"
scores = ["msp", "entropy", "max-logit"]
[[model]]
name = "libre"
weights = "{}"
scores = ["feature-variance", "softmax-variance", "mutual-information", "msp"]
[[attack]]
name = "fgsm"
eps = [0.3]
[[attack]]
name = "pgd"
eps = [0.3]
steps = 40
step_size = 0.01
[[attack]]
name = "cw"
eps = [0.3]
steps = 40
step_size = 0.01
# The adaptive attacker: knows each model's first score and its threshold (5% FPR of the clean
# rows), ascends the loss until the digit is misclassified, then descends the score.
[[attack]]
name = "selective"
eps = [0.3]
steps = 100
step_size = 0.01
params = {{ restarts = 1 }}
"#,
        model.display()
    )
}

fn run_libre(args: Args, out: Output) -> anyhow::Result<()> {
    if args.epochs == 0 || args.train_images == 0 || args.test_images == 0 {
        anyhow::bail!("--epochs, --train-images and --test-images must be at least 1");
    }
    let device = super::resolve_device(&args.device, &out)?;
    let mut note = super::fetch_note(&out);
    libre::zoo::resolve("zoo:lenet5-mnist", &mut note)?;
    let train_ds = libre::data::open("mnist:train[0:50000]", Some(args.train_images), &mut note)?;
    let model_path = args.out.join("libre").join("model.safetensors");
    let t0 = std::time::Instant::now();
    if model_path.exists() {
        out.note(format!(
            "1/2 LiBRe model exists: {} (delete it to retrain)",
            model_path.display()
        ));
    } else {
        out.note(format!(
            "1/2 LiBRe fine-tuning: zoo LeNet5, linear1 as a {}-member ensemble, anchored objective, \
             {} epoch(s) on {} MNIST training digits",
            args.mc_samples,
            args.epochs,
            train_ds.len()
        ));
        let weights = libre::zoo::resolve("zoo:lenet5-mnist", &mut note)?;
        let (mut model, _) = libre::checkpoint::load(&weights, device)?;
        tch::manual_seed(args.seed);
        let converted = model.convert(
            &LayerSelection::LastBlock,
            &PosteriorConfig::new(Family::Ensemble, args.mc_samples),
        )?;
        let bs = 128;
        let steps = args.epochs * train_ds.len().div_ceil(bs);
        let mut lcfg = LibreConfig::for_attack_eps(ObjectiveKind::Anchored, 0.3);
        lcfg.member_init_std = 0.0;
        let lr_members = 0.05;
        let cfg = TrainConfig {
            kind: "finetune".into(),
            data: "mnist:train[0:50000]".into(),
            limit: Some(args.train_images),
            eval_data: None,
            epochs: args.epochs,
            batch_size: bs,
            seed: args.seed,
            augment: Augment::None,
            groups: train::libre_groups(
                Family::Ensemble,
                lr_members,
                1e-4,
                1e-4,
                args.mc_samples,
                steps,
            ),
            prior: None,
            sampling: Some(McSampling::PerExample),
            uncertainty_reg: None,
            eval_samples: args.mc_samples,
            libre: Some(lcfg),
        };
        let run = RunDir::create(&args.out.join("libre"))?;
        run.write_json(
            "config.json",
            &json!({ "train": cfg, "model": model.config(), "posterior": model.posterior(),
                     "provenance": Provenance::new(device),
                     "extra": { "weights": "zoo:lenet5-mnist", "recipe": "libre",
                                "converted_layers": converted } }),
        )?;
        let pb = out.progress(train_ds.len() as u64, "LiBRe");
        train::fit(
            model.as_mut(),
            &train_ds,
            None,
            &cfg,
            &run,
            train::RunStart::New,
            &mut Obs(&pb),
        )?;
        pb.finish_and_clear();
    }
    let train_secs = t0.elapsed().as_secs_f64();
    out.note(format!(
        "2/2 attacking the first {} test digits (FGSM, PGD, CW at eps 0.3) on the DNN and the BNN, \
         scoring and writing the report",
        args.test_images
    ));
    let text = experiment(&model_path, args.test_images);
    let plan = libre::evaluate::Experiment::parse(&text)?;
    let report = args.out.join("report");
    libre::evaluate::pin_experiment(&report, &text)?;
    let t1 = std::time::Instant::now();
    libre::evaluate::run_cells(&plan, &report, None, device, &mut note, &mut ())?;
    let fin = libre::evaluate::finish(&plan, &report)?;
    let eval_secs = t1.elapsed().as_secs_f64();
    let table = super::evaluate::auroc_text(&fin.summary);
    let acc: Vec<String> = fin.summary["classification"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|c| {
                    format!(
                        "{} {:.2}%",
                        c["model"].as_str().unwrap_or(""),
                        100.0 * c["top1"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let data = json!({
        "report": report.join("index.html"), "summary": report.join("summary.json"),
        "model": model_path, "train_seconds": train_secs, "evaluate_seconds": eval_secs,
        "auroc": libre::evaluate::auroc_table(&fin.summary)
            .iter().map(|(d, a, e, v)| json!({"detector": d, "attack": a, "eps": e, "auroc": v}))
            .collect::<Vec<_>>(),
    });
    out.result(data, || {
        format!(
            "Adversarial detection on the first {} MNIST test digits (all clean vs all adversarial \
             images; each model attacked white-box, the BNN through its 20-sample predictive).\n\
             AUROC: 0.5 = chance, 1.0 = every adversarial image scores above every clean one.\n\
             clean accuracy: {}\n{table}report: {}\n",
            args.test_images,
            acc.join(", "),
            report.join("index.html").display()
        )
    });
    Ok(())
}

fn run_bayesadapter(args: Args, out: Output) -> anyhow::Result<()> {
    let device = super::resolve_device(&args.device, &out)?;
    let mut note = super::fetch_note(&out);
    let weights = libre::zoo::resolve("zoo:lenet5-mnist", &mut note)?;
    let train_ds = libre::data::open("mnist:train", None, &mut note)?;
    let test_ds = libre::data::open("mnist:test", None, &mut note)?;
    let (mut model, _) = libre::checkpoint::load(&weights, device)?;

    out.note("1/4 evaluating the DNN (zoo:lenet5-mnist) on the MNIST test set");
    let det = EvalOptions {
        mode: ForwardMode::Deterministic,
        batch_size: 500,
        curve: vec![],
        seed: args.seed,
    };
    let dnn = eval::evaluate(model.as_ref(), &test_ds, &det, &mut |_| {})?;

    out.note("2/4 converting every layer to a mean-field Gaussian posterior");
    tch::manual_seed(args.seed);
    let pc = PosteriorConfig::new(Family::MeanField, args.mc_samples);
    let converted = model.convert(&LayerSelection::All, &pc)?;

    out.note(format!(
        "3/4 Bayesian fine-tuning, {} epoch(s) on the 60k MNIST training set",
        args.epochs
    ));
    let bs = 128;
    let steps = train_ds.len().div_ceil(bs);
    let cfg = TrainConfig {
        kind: "finetune".into(),
        data: "mnist:train".into(),
        limit: None,
        eval_data: None,
        epochs: args.epochs,
        batch_size: bs,
        seed: args.seed,
        augment: Augment::None,
        groups: train::finetune_groups(Family::MeanField, 8e-4, 0.1, args.epochs, steps),
        prior: Some(PriorConfig {
            decay: 1e-4,
            num_data: train_ds.len(),
            moped: false,
        }),
        // Local reparameterisation: per example the same output distribution as drawing a weight
        // sample per example (exact for mean-field Linear/Conv2d), at the cost of two ops instead
        // of a [B, out, in] weight draw; this keeps the quick start within minutes on 2 cores.
        sampling: Some(McSampling::LocalReparam),
        uncertainty_reg: None,
        eval_samples: args.mc_samples,
        libre: None,
    };
    let run = RunDir::create(&args.out)?;
    run.write_json(
        "config.json",
        &json!({ "train": cfg, "model": model.config(), "converted_layers": converted,
                 "weights": "zoo:lenet5-mnist", "provenance": Provenance::new(device) }),
    )?;
    let pb = out.progress(train_ds.len() as u64, "fine-tune");
    let t0 = std::time::Instant::now();
    let logs = train::fit(
        model.as_mut(),
        &train_ds,
        None,
        &cfg,
        &run,
        train::RunStart::New,
        &mut Obs(&pb),
    )?;
    pb.finish_and_clear();
    let ft_secs = t0.elapsed().as_secs_f64();

    out.note(format!(
        "4/4 evaluating the {}-sample Bayes ensemble",
        args.mc_samples
    ));
    let mc = EvalOptions {
        mode: ForwardMode::ParallelMc {
            samples: args.mc_samples,
        },
        batch_size: 250,
        curve: vec![],
        seed: args.seed,
    };
    let bnn = eval::evaluate(model.as_ref(), &test_ds, &mc, &mut |_| {})?;

    let (d, b) = (&dnn.metrics, &bnn.metrics);
    let data = json!({
        "dnn": { "top1": d.top1, "nll": d.nll, "ece": d.ece, "brier": d.brier, "seconds": dnn.seconds },
        "bnn": { "top1": b.top1, "nll": b.nll, "ece": b.ece, "brier": b.brier, "seconds": bnn.seconds,
                 "mc_samples": args.mc_samples },
        "finetune": { "epochs": logs.len(), "seconds": ft_secs, "final_loss": logs.last().map(|l| l.loss) },
        "run_dir": args.out, "n_test": d.n,
    });
    run.write_json("summary.json", &data)?;
    out.result(data, || {
        format!(
            "LeNet5 (advertorch) on the MNIST test set ({} images)\n\
             model                     top-1      NLL      ECE    Brier\n\
             DNN                     {:>6.2}%  {:.4}  {:.4}  {:.4}\n\
             BNN (mean-field, S={:<3}) {:>6.2}%  {:.4}  {:.4}  {:.4}\n\
             fine-tuning: {} epoch(s) in {:.0} s; run directory {}\n",
            d.n,
            100.0 * d.top1,
            d.nll,
            d.ece,
            d.brier,
            args.mc_samples,
            100.0 * b.top1,
            b.nll,
            b.ece,
            b.brier,
            logs.len(),
            ft_secs,
            args.out.display()
        )
    });
    Ok(())
}
