//! `libre attack`: craft adversarial examples for a model (DNN or Bayes ensemble) and write them
//! as a batch file (`images` float32 [N,C,H,W] in [0,1], `labels` int64 [N]).

use super::Output;
use libre::bayes::ForwardMode;
use libre::victim::ModelVictim;
use libre_attacks::{by_name, ReportAccumulator, ATTACK_NAMES};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Kind, Tensor};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A libre checkpoint or zoo:NAME (the target, and the surrogate unless --surrogate is given).
    #[arg(long)]
    pub weights: String,
    /// Read --weights, a plain state_dict (.pt/.pth, .safetensors without libre metadata), as
    /// this architecture: lenet5, digitcnn, resnet18, resnet34, resnet50.
    #[arg(long, value_name = "ARCH")]
    pub model: Option<String>,
    /// Craft on this model instead and evaluate on --weights (transfer attack).
    #[arg(long)]
    pub surrogate: Option<String>,
    /// Images to attack: a data spec (mnist:test, mnist:test[0:1000], folder:DIR, FILE.safetensors).
    #[arg(long)]
    pub data: String,
    /// Attack only the first N images [default: all].
    #[arg(long)]
    pub limit: Option<usize>,
    /// fgsm, fgsm-rs, fgsm-l2, bim, bim-l2, pgd, pgd-l2, mim, tim, di-mim, cw, cw-l2, deepfool,
    /// deepfool-linf, spsa.
    #[arg(long)]
    pub attack: String,
    /// Perturbation budget (per coordinate; l2 attacks use radius eps*sqrt(D)).
    #[arg(long, allow_negative_numbers = true)]
    pub eps: Option<f64>,
    /// Step of iterative attacks [default: 2.5 * eps / steps when --eps is given; else the
    /// attack's own default].
    #[arg(long)]
    pub step_size: Option<f64>,
    /// Iterations of iterative attacks [default: the attack's own: 20 for bim/pgd/mim/tim/di-mim,
    /// 100 for spsa; at most 100000].
    #[arg(long)]
    pub steps: Option<usize>,
    /// PGD: start at the clean image instead of a uniform random point of the eps-ball.
    #[arg(long)]
    pub no_random_start: bool,
    /// Targeted attack towards a random class other than the label (seeded).
    #[arg(long)]
    pub targeted: bool,
    /// Targeted attack towards this class.
    #[arg(long)]
    pub target_class: Option<i64>,
    /// Attack the Bayes ensemble's predictive with S MC samples (default: the checkpoint's S for a
    /// Bayesian model; deterministic for a DNN).
    #[arg(long)]
    pub mc_samples: Option<usize>,
    /// How a mean-field posterior draws in the parallel MC forward: weights (S weight samples
    /// shared by the batch, the reference's estimator) or local-reparam (each example's outputs
    /// drawn from their Gaussian where that is exact: Linear layers and convs on 1x1 maps; same
    /// per-example predictive, independent across examples, much faster for big last blocks).
    #[arg(long, default_value = "weights", value_name = "DRAWS", value_parser = super::parse_mc_draws)]
    pub mc_draws: libre::bayes::McDraws,
    /// Adaptive ("mimicry") attack: ascend the attack loss minus C times the detector score
    /// (--score), both from one forward.
    #[arg(long, value_name = "C")]
    pub adaptive: Option<f64>,
    /// The detector score the adaptive attack pushes down [default: feature-variance for a
    /// Bayesian model, msp for a DNN].
    #[arg(long)]
    pub score: Option<String>,
    /// Expectation over Transformation: forwards averaged per gradient step for a victim that
    /// samples its weights (mean-field); ignored (one forward) for a deterministic one.
    #[arg(long)]
    pub eot: Option<usize>,
    /// Extra attack settings as KEY=JSON (e.g. --param mc_mode='"weighted-samples"').
    #[arg(long = "param")]
    pub params: Vec<String>,
    /// Seed of random starts, random targets, SPSA directions and weight sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per attack batch.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Output batch file (.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Numeric precision of the target's (and surrogate's) forward and backward: f32, or bf16 to
    /// attack a model deployed at bf16 (input gradients come back as float32; the clean and
    /// robust accuracies are measured at this precision; docs/design.md section 15).
    #[arg(long, default_value = "f32", value_parser = super::parse_precision)]
    pub precision: libre::precision::Precision,
}

fn mode_for(
    model: &dyn libre::models::BayesModel,
    s: Option<usize>,
) -> anyhow::Result<ForwardMode> {
    let samples = libre::models::samples_for(model, s)?;
    Ok(libre::models::mode_for(model, samples))
}

/// The most iterations (`--steps`, or an attack's `max_iter`) `libre attack` runs; the same
/// bound as the adaptive attacks' `MAX_STEPS` in the attacks crate.
const MAX_STEPS: usize = 100_000;

pub fn run(args: Args, out: Output) -> anyhow::Result<()> {
    if !args.out.to_string_lossy().ends_with(".safetensors") {
        anyhow::bail!(
            "--out must name a .safetensors batch file, got {}",
            args.out.display()
        );
    }
    if !ATTACK_NAMES.contains(&args.attack.as_str()) {
        anyhow::bail!(
            "unknown --attack '{}': available {}",
            args.attack,
            ATTACK_NAMES.join(", ")
        );
    }
    // JSON has no NaN or infinity: they would reach the registry as null and fail there with a
    // message that does not name the flag.
    for (flag, v) in [("--eps", args.eps), ("--step-size", args.step_size)] {
        if let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 0.0)) {
            anyhow::bail!("{flag} {v}: must be a finite number >= 0");
        }
    }
    let mut params = Map::new();
    if let Some(e) = args.eps {
        params.insert("eps".into(), json!(e));
    }
    if let Some(a) = args.step_size {
        params.insert("step_size".into(), json!(a));
    }
    if let Some(k) = args.steps {
        params.insert("steps".into(), json!(k));
    }
    if args.no_random_start {
        params.insert("random_start".into(), json!(false));
    }
    let targeted = args.targeted || args.target_class.is_some();
    if targeted {
        params.insert("targeted".into(), json!(true));
    }
    if let Some(c) = args.adaptive {
        if !c.is_finite() {
            anyhow::bail!("--adaptive {c}: C must be a finite number");
        }
        params.insert("adaptive_c".into(), json!(c));
    }
    if let Some(k) = args.eot {
        params.insert("eot_samples".into(), json!(k));
    }
    for p in &args.params {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--param {p}: expected KEY=JSON"))?;
        let v: Value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        params.insert(k.to_string(), v);
    }
    // Iteration budgets past these would not end in any useful time (a typo of a few zeros):
    // refused before any work, by name. `--param` can set them too.
    for key in ["steps", "max_iter", "max_iterations", "binary_search_steps"] {
        if let Some(v) = params.get(key).and_then(Value::as_u64) {
            if v > MAX_STEPS as u64 {
                let flag = if key == "steps" && args.steps.is_some() {
                    "--steps".to_string()
                } else {
                    format!("--param {key}")
                };
                anyhow::bail!(
                    "{flag} {v}: at most {MAX_STEPS} iterations (a larger budget would not \
                     finish in useful time)"
                );
            }
        }
    }
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
    let device = super::resolve_device(&args.device, &out)?;
    let target_path = libre::zoo::resolve(&args.weights, &mut super::fetch_note(&out))?;
    // A detector file brings its MC dropout and fitted classic detector (adaptive attacks on it).
    let mut det = match &args.model {
        Some(a) if !libre::checkpoint::is_libre_checkpoint(&target_path) => {
            let (m, _) = libre::checkpoint::load_or_build(&target_path, Some(a), device)?;
            libre::detect::Detector::new(m, None)?
        }
        _ => libre::detect::Detector::load(&target_path, device, None)?,
    };
    det.set_mc_draws(args.mc_draws);
    det.set_precision(args.precision)?;
    super::note_precision(args.precision, device, &out);
    let target = det.model();
    let surrogate = match &args.surrogate {
        Some(s) => {
            let p = libre::zoo::resolve_flag("--surrogate", s, &mut super::fetch_note(&out))?;
            let mut m = libre::checkpoint::load(&p, device)?.0;
            m.set_precision(args.precision)?;
            Some(m)
        }
        None => None,
    };
    let ds = libre::data::open(&args.data, args.limit, &mut super::fetch_note(&out))?;
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
    meta.insert("weights".to_string(), args.weights.clone());
    if let Some(s) = &args.surrogate {
        meta.insert("surrogate".to_string(), s.clone());
    }
    meta.insert("data".to_string(), args.data.clone());
    meta.insert("seed".to_string(), args.seed.to_string());
    meta.insert("mc_draws".to_string(), args.mc_draws.to_string());
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
            args.attack, args.weights, report.n, args.out.display(),
            100.0 * report.clean_accuracy, 100.0 * report.robust_accuracy, 100.0 * report.success_rate,
            report.mean_linf, report.max_linf, report.mean_l2, report.max_l2, per_image_ms
        )
    });
    Ok(())
}
