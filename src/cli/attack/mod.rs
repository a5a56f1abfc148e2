//! `libre attack`: craft adversarial examples for a model (DNN or Bayes ensemble) and write them
//! as a batch file (`images` float32 [N,C,H,W] in [0,1], `labels` int64 [N]). The flags and
//! their translation into the attack's settings are in `args`.

mod args;

pub use args::Args;

use crate::cli::Output;
use libre::bayes::ForwardMode;
use libre::detect::victim::ModelVictim;
use libre_attacks::{by_name, ReportAccumulator};
use serde_json::{json, Value};
use std::collections::HashMap;
use tch::{Kind, Tensor};

fn mode_for(
    model: &dyn libre::models::BayesModel,
    s: Option<usize>,
) -> anyhow::Result<ForwardMode> {
    let samples = libre::models::samples_for(model, s)?;
    Ok(libre::models::mode_for(model, samples))
}

pub fn run(args: Args, out: Output) -> anyhow::Result<()> {
    if !args.out.to_string_lossy().ends_with(".safetensors") {
        anyhow::bail!(
            "--out must name a .safetensors batch file, got {}",
            args.out.display()
        );
    }
    let mut params = args.attack_params()?;
    // Validate everything before any heavy work.
    let mut attack = by_name(&args.attack, &Value::Object(params.clone()))?;
    // An iterative attack given only eps would keep the registry's step (1/255 for 20 steps
    // reaches at most 0.08): derive the step from eps instead, as 2.5 * eps / steps (Madry et
    // al.'s rule), and say so.
    let cfg = attack.config_json();
    if let (Some(e), None, Some(k)) = (args.eps, args.step_size, cfg["steps"].as_u64()) {
        if cfg.get("step_size").is_some() && k > 0 {
            let step = 2.5 * e / k as f64;
            params.insert("step_size".into(), json!(step));
            attack = by_name(&args.attack, &Value::Object(params))?;
            out.note(format!(
                "{}: step size {step:.5} = 2.5 * eps / steps (pass --step-size to choose it)",
                args.attack
            ));
        }
    }
    let device = crate::cli::resolve_device(&args.device.device, &out)?;
    let target_path =
        libre::weights::zoo::resolve(&args.source.weights, &mut crate::cli::fetch_note(&out))?;
    // A detector file brings its MC dropout and fitted classic detector (adaptive attacks on it).
    let mut det = match &args.source.model {
        Some(a) if !libre::weights::checkpoint::is_libre_checkpoint(&target_path) => {
            let (m, _) = libre::weights::checkpoint::load_or_build(&target_path, Some(a), device)?;
            libre::detect::Detector::new(m, None)?
        }
        _ => libre::detect::Detector::load(&target_path, device, None)?,
    };
    det.set_mc_draws(args.mc_draws.mc_draws);
    det.set_precision(args.precision)?;
    crate::cli::note_precision(args.precision, device, &out);
    let target = det.model();
    let surrogate = match &args.surrogate {
        Some(s) => {
            let p = libre::weights::zoo::resolve_setting(
                "surrogate",
                s,
                &mut crate::cli::fetch_note(&out),
            )?;
            let mut m = libre::weights::checkpoint::load(&p, device)?.0;
            m.set_precision(args.precision)?;
            Some(m)
        }
        None => None,
    };
    let ds = libre::data::open(&args.data, args.limit, &mut crate::cli::fetch_note(&out))?;
    let k = target.config().num_classes;
    ds.check_labels(k as usize)?;
    if ds.labels().is_none() {
        anyhow::bail!("{} has no labels: attacks need them", ds.name);
    }
    let tmode = match (det.classic(), args.mc_samples) {
        (Some(_), None) => det.mode(),
        _ => mode_for(target, args.mc_samples)?,
    };
    let score = if args.adaptive.is_some() || args.score.is_some() {
        let sc: libre::detect::Score = match &args.score {
            Some(s) => s.parse()?,
            None if det.classic().is_some() => det.default_score(),
            None => libre::detect::Score::default_for(tmode.samples()),
        };
        match sc.classic() {
            Some(_) => det.check_score(sc)?,
            None => sc.check_available(tmode.samples())?,
        }
        Some(sc)
    } else {
        None
    };
    let tv = ModelVictim {
        model: target,
        mode: tmode,
        score,
        classic: det.classic(),
    };
    let sv = match surrogate.as_ref() {
        Some(m) => {
            let mode = mode_for(m.as_ref(), args.mc_samples)?;
            let samples = mode.samples();
            Some(ModelVictim {
                model: m.as_ref(),
                mode,
                score: score
                    .filter(|sc| sc.classic().is_none() && (!sc.needs_samples() || samples >= 2)),
                classic: None,
            })
        }
        None => None,
    };
    if args.adaptive.is_some() && args.surrogate.is_some() {
        anyhow::bail!(
            "--adaptive attacks the target's own detector; it cannot be combined with --surrogate"
        );
    }
    let crafter = sv.as_ref().unwrap_or(&tv);

    let mut meta = HashMap::new();
    meta.insert("attack".to_string(), args.attack.clone());
    meta.insert(
        "attack_config".to_string(),
        attack.config_json().to_string(),
    );
    meta.insert("weights".to_string(), args.source.weights.clone());
    if let Some(s) = &args.surrogate {
        meta.insert("surrogate".to_string(), s.clone());
    }
    meta.insert("data".to_string(), args.data.clone());
    meta.insert("seed".to_string(), args.seed.to_string());
    meta.insert("mc_draws".to_string(), args.mc_draws.mc_draws.to_string());
    meta.insert("precision".to_string(), args.precision.to_string());
    if let (Some(c), Some(sc)) = (args.adaptive, score) {
        meta.insert("adaptive_c".to_string(), c.to_string());
        meta.insert("adaptive_score".to_string(), sc.to_string());
    }
    meta.insert("num_classes".to_string(), k.to_string());
    meta.insert("libre_version".to_string(), libre::VERSION.to_string());
    // Streamed to disk batch by batch: memory stays bounded by one batch whatever the data size.
    let mut writer = libre::data::BatchFileWriter::create(&args.out, ds.len(), ds.shape(), meta)?;
    let pb = out.progress(ds.len() as u64, &args.attack);
    let mut acc = ReportAccumulator::default();
    let t0 = std::time::Instant::now();
    for (bi, batch) in ds.batches(args.batch_size).enumerate() {
        let (x, y) = batch?;
        let (x, y) = (x.to_device(device), y.to_device(device));
        // Check the shapes through the library (a clear error, not a panic inside the attack):
        // the model's cached tap shapes at this input size, one dummy forward for the whole run.
        let s = x.size();
        libre::models::tap_shapes_at(target, [s[1], s[2], s[3]])?;
        let goal = if let Some(t) = args.target_class {
            if t < 0 || t >= k {
                anyhow::bail!("--target-class {t} out of range for a {k}-class model");
            }
            Some(Tensor::full_like(&y, t))
        } else if args.targeted {
            // A seeded random class different from the label: y + U{1..K-1} mod K.
            let g = tch::Tensor::randint_low(1, k, y.size(), (Kind::Int64, device));
            Some((&y + g).remainder(k))
        } else {
            None
        };
        let seed = args.seed.wrapping_add(bi as u64);
        tch::manual_seed(seed as i64);
        let x_adv = attack.perturb(crafter, &x, goal.as_ref().unwrap_or(&y), seed)?;
        acc.add(&tv, &x, &x_adv, &y, goal.as_ref())?;
        writer.push(&x_adv.to_device(tch::Device::Cpu).to_kind(Kind::Float))?;
        pb.inc(x.size()[0] as u64);
    }
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let report = acc.finish();
    writer.finish(ds.labels().expect("checked above"))?;
    let per_image_ms = 1000.0 * secs / report.n.max(1) as f64;
    let data = json!({
        "attack": args.attack, "config": attack.config_json(), "out": args.out,
        "n": report.n, "clean_accuracy": report.clean_accuracy, "robust_accuracy": report.robust_accuracy,
        "success_rate": report.success_rate, "mean_linf": report.mean_linf, "max_linf": report.max_linf,
        "mean_l2": report.mean_l2, "max_l2": report.max_l2, "time_per_image_ms": per_image_ms,
        "transfer_from": args.surrogate, "precision": args.precision,
    });
    out.result(data, || {
        format!(
            "{} on {} ({} images) -> {}\n  clean accuracy {:.2}%  robust accuracy {:.2}%  success rate {:.2}%\n  l_inf mean {:.4} max {:.4}   l_2 mean {:.4} max {:.4}   {:.2} ms/image\n",
            args.attack, args.source.weights, report.n, args.out.display(),
            100.0 * report.clean_accuracy, 100.0 * report.robust_accuracy, 100.0 * report.success_rate,
            report.mean_linf, report.max_linf, report.mean_l2, report.max_l2, per_image_ms
        )
    });
    Ok(())
}
