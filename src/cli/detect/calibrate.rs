//! `libre calibrate`: the detector `--detector` names, built on the model (MC dropout, or a
//! classic / input-transformation detector fitted here), then a threshold at `--fpr` on clean
//! held-out data, saved as one detector file. The work is in `libre::detect`.

use super::build::build_detector;
use super::checks;
use super::CalibrateArgs;
use crate::cli::Output;
use libre::detect::classic::ClassicKind;
use libre::detect::{CalibrationSource, Detector, Score};
use libre::runtime::precision::Precision;
use serde_json::json;
use std::path::Path;

/// `libre calibrate`.
pub fn run_calibrate(args: CalibrateArgs, out: Output) -> anyhow::Result<()> {
    if !args.out.to_string_lossy().ends_with(".safetensors") {
        anyhow::bail!(
            "--out must name a .safetensors detector file, got {}",
            args.out.display()
        );
    }
    if args.batch_size == 0 {
        anyhow::bail!("--batch-size must be at least 1");
    }
    // Checked before any work (the library checks again).
    if !(args.fpr > 0.0 && args.fpr < 1.0) {
        anyhow::bail!(
            "--fpr {}: the target false-positive rate must lie in (0, 1)",
            args.fpr
        );
    }
    checks::check_detector_flags(&args)?;
    if let Some(f) = &args.fit_data {
        checks::check_disjoint(f, &args.data, args.limit)?;
    }
    crate::cli::check_weights_arg(&args.weights)?;
    checks::check_out_file(&args.out)?;
    let mut named: Vec<(&str, &Path)> = vec![("the --weights file", Path::new(&args.weights))];
    for (what, spec) in [
        ("the --data file", Some(&args.data)),
        ("the --fit-data file", args.fit_data.as_ref()),
        ("the --fit-adversarial file", args.fit_adversarial.as_ref()),
        ("the --fit-clean file", args.fit_clean.as_ref()),
    ] {
        if let Some(s) = spec {
            named.push((what, Path::new(s.as_str())));
        }
    }
    crate::cli::refuse_output_over_inputs("--out", &args.out, &named)?;
    // The calibration set is sized before any model loads or fits.
    let need = checks::min_calibration_images(args.fpr);
    let ds = libre::data::open(&args.data, args.limit, &mut crate::cli::fetch_note(&out))?;
    if ds.len() < need {
        anyhow::bail!(
            "--data {}: {} clean image(s) cannot calibrate --fpr {}: the threshold must be one of \
             the clean scores, which takes at least {need} images (ceil(1 / fpr)); pass more \
             data, or a larger --fpr",
            args.data,
            ds.len(),
            args.fpr
        );
    }
    let device = crate::cli::resolve_device(&args.device.device, &out)?;
    let path = libre::weights::zoo::resolve(&args.weights, &mut crate::cli::fetch_note(&out))?;
    crate::cli::refuse_output_over_inputs("--out", &args.out, &[("the --weights file", &path)])?;
    let requested = match args.detector.as_str() {
        "mc-dropout" | "bu" | "kd-bu" => None, // a DNN: the samples are dropout masks
        _ => args.mc_samples,
    };
    // Checked before a classic detector's fitting, which can take minutes.
    if args.precision != Precision::F32 && args.detector.parse::<ClassicKind>().is_ok() {
        anyhow::bail!(
            "--precision {}: classic detectors ({}) are fitted and scored at f32",
            args.precision,
            args.detector
        );
    }
    let mut det = Detector::load(&path, device, requested)?;
    det.set_mc_draws(args.mc_draws.mc_draws);
    let mut det = build_detector(&args, det, device, &out)?;
    let score: Score = match &args.score {
        Some(s) => s.parse()?,
        None if args.detector == "bu" => Score::SoftmaxVariance,
        None => det.default_score(),
    };
    det.check_score(score)?;
    det.set_precision(args.precision)?;
    crate::cli::note_precision(args.precision, device, &out);
    let pb = out.progress(ds.len() as u64, "calibrate");
    let t0 = std::time::Instant::now();
    let clean = det.score_dataset(&ds, score, args.batch_size, args.seed, device, &mut |n| {
        pb.inc(n as u64)
    })?;
    pb.finish_and_clear();
    let source = CalibrationSource {
        data: args.data.clone(),
        weights: args.weights.clone(),
        seed: args.seed,
    };
    let meta = det.calibrated_meta(score, &clean, args.fpr, args.precision, source)?;
    let cal = &meta.calibration;
    // The file keeps the float32 weights; the precision is in `meta`.
    det.set_precision(Precision::F32)?;
    det.save(&args.out, &meta)?;
    let secs = t0.elapsed().as_secs_f64();
    let data = json!({
        "out": args.out, "score": score, "samples": det.samples(),
        "mc_draws": args.mc_draws.mc_draws, "precision": args.precision,
        "threshold": cal.threshold,
        "target_fpr": cal.target_fpr, "achieved_fpr": cal.achieved_fpr,
        "achieved_fpr_ci95": cal.achieved_fpr_ci95, "n": cal.n, "data": args.data,
        "seconds": secs,
    });
    out.result(data, || {
        format!(
            "detector {} ({} on {} images of {}, S = {}):\n  threshold {:.6}  target FPR {:.3}  \
             achieved {:.4} (95% CI {:.4}-{:.4})\n",
            args.out.display(),
            score,
            cal.n,
            args.data,
            det.samples(),
            cal.threshold,
            cal.target_fpr,
            cal.achieved_fpr,
            cal.achieved_fpr_ci95.0,
            cal.achieved_fpr_ci95.1
        )
    });
    Ok(())
}
