//! `libre quickstart`'s LiBRe demonstration: LiBRe fine-tuning of the zoo LeNet5, then the
//! experiment [`libre::evaluate::experiment::quickstart_mnist`] and its AUROC table.

use super::Args;
use crate::cli::Output;
use libre::bayes::{Family, LayerSelection, McSampling, PosteriorConfig};
use libre::detect::{LibreConfig, ObjectiveKind};
use libre::jobs::run::{Provenance, RunDir};
use libre::train::{self, Augment, TrainConfig};
use serde_json::json;

/// The LiBRe demonstration (the default).
pub(super) fn run_libre(args: Args, out: Output) -> anyhow::Result<()> {
    if args.epochs == 0 || args.train_images == 0 || args.test_images == 0 {
        anyhow::bail!("--epochs, --train-images and --test-images must be at least 1");
    }
    let device = crate::cli::resolve_device(&args.device.device, &out)?;
    let mut note = crate::cli::fetch_note(&out);
    libre::weights::zoo::resolve("zoo:lenet5-mnist", &mut note)?;
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
        let weights = libre::weights::zoo::resolve("zoo:lenet5-mnist", &mut note)?;
        let (mut model, _) = libre::weights::checkpoint::load(&weights, device)?;
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
        super::fine_tune(model.as_mut(), &train_ds, &cfg, &run, &out, "LiBRe")?;
    }
    let train_secs = t0.elapsed().as_secs_f64();
    out.note(format!(
        "2/2 attacking the first {} test digits (FGSM, PGD, CW at eps 0.3) on the DNN and the BNN, \
         scoring and writing the report",
        args.test_images
    ));
    let text = libre::evaluate::experiment::quickstart_mnist(&model_path, args.test_images);
    let plan = libre::evaluate::Experiment::parse(&text)?;
    let report = args.out.join("report");
    libre::evaluate::pin_experiment(&report, &text)?;
    let t1 = std::time::Instant::now();
    libre::evaluate::run_cells(&plan, &report, None, device, &mut note, &mut ())?;
    let fin = libre::evaluate::finish(&plan, &report)?;
    let eval_secs = t1.elapsed().as_secs_f64();
    let table = crate::cli::evaluate::auroc_text(&fin.summary);
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
