//! `libre detect`: score images, folders, batch files or data specs with a detector file (or any
//! checkpoint and a threshold), flag the suspicious ones, write one row each (csv, jsonl or a
//! table), optionally as one part of a sharded run. The work is in `libre::detect`.

use super::{checks, outputs};
use super::{DetectArgs, DetectCmd};
use crate::cli::{CheckFailed, Output};
use libre::cache::AtomicFile;
use libre::data::image::ImagePolicy;
use libre::detect::input;
use libre::detect::parts;
use libre::detect::rows::{Format, RowScorer, RowWriter};
use libre::detect::{scores, Detector, Score};
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};

/// `libre detect` (and `libre detect merge`).
pub fn run_detect(args: DetectArgs, out: Output) -> anyhow::Result<()> {
    if let Some(DetectCmd::Merge { files, out: dest }) = &args.cmd {
        return super::merge::run_merge(files, dest, out);
    }
    // clap requires --weights unless a subcommand (merge) ran above.
    let Some(weights) = args.weights.clone() else {
        anyhow::bail!("--weights is required");
    };
    crate::cli::check_weights_arg(&weights)?;
    if args.batch_size == 0 {
        anyhow::bail!("--batch-size must be at least 1");
    }
    if let Some(t) = args.threshold {
        if !t.is_finite() {
            anyhow::bail!("--threshold {t}: must be a finite number");
        }
    }
    let outputs::Io {
        shard,
        out_path,
        list,
    } = outputs::plan(&args, &weights, &out)?;
    let device = crate::cli::resolve_device(&args.device.device, &out)?;
    let path = libre::weights::zoo::resolve(&weights, &mut crate::cli::fetch_note(&out))?;
    if let Some(p) = &out_path {
        crate::cli::refuse_output_over_inputs("--out", p, &[("the --weights file", &path)])?;
    }
    let mut det = Detector::load(&path, device, args.mc_samples)?;
    det.set_mc_draws(args.mc_draws.mc_draws);
    checks::check_samples(&det, args.mc_samples, args.threshold.is_some())?;
    let precision = checks::detect_precision(&det, args.precision, args.threshold.is_some())?;
    det.set_precision(precision)?;
    crate::cli::note_precision(precision, device, &out);
    let shown: Vec<Score> = match &args.score {
        Some(s) => scores::parse_list(s)?,
        // The detector's own score first (its first column is what flags).
        None => {
            let mut v = det.available_scores();
            if let Some(m) = det.meta() {
                v.retain(|s| *s != m.score);
                v.insert(0, m.score);
            }
            v
        }
    };
    for s in &shown {
        det.check_score(*s)?;
    }
    // The flagging score: the detector's own, else the first shown.
    let flag_score = det.meta().map(|m| m.score).unwrap_or(shown[0]);
    let threshold = match (args.threshold, args.fpr, det.meta()) {
        (Some(t), _, _) => Some(t),
        (None, Some(f), Some(m)) => Some(m.recalibrate(f)?.threshold),
        (None, Some(_), None) => anyhow::bail!(
            "--fpr needs a detector file from `libre calibrate` ({weights} has no calibration); \
             or pass --threshold"
        ),
        (None, None, Some(m)) => Some(m.calibration.threshold),
        (None, None, None) => {
            out.note(format!(
                "{weights} is not calibrated: no input is flagged (run `libre calibrate`, or \
                 pass --threshold)"
            ));
            None
        }
    };
    if args.fail_on_detect && threshold.is_none() {
        anyhow::bail!("--fail-on-detect needs a threshold: a calibrated detector or --threshold");
    }
    let mut segs = input::resolve(&args.inputs, &mut crate::cli::fetch_note(&out))?;
    if let Some(l) = list {
        l.resolve_into(&mut segs, &mut crate::cli::fetch_note(&out))?;
    }
    outputs::refuse_over_images(out_path.as_deref(), &segs)?;
    let all = input::chunks(&segs, args.batch_size);
    let batches = match shard {
        Some(s) => s.range(all.len()),
        None => 0..all.len(),
    };
    let plan = &all[batches.clone()];
    let total: usize = plan.iter().map(|c| c.end - c.start).sum();
    if let Some(s) = shard {
        out.note(format!(
            "shard {s}: batches {}..{} of {} ({total} inputs) -> {}",
            batches.start,
            batches.end,
            all.len(),
            out_path.as_ref().expect("checked above").display()
        ));
    }
    let want = det.input_shape();
    let fmt = match args.format.as_deref() {
        Some("csv") => Format::Csv,
        Some("jsonl") => Format::Jsonl,
        Some("table") => Format::Table,
        _ if out.json => Format::Jsonl,
        _ if out_path.is_none() && std::io::stdout().is_terminal() => Format::Table,
        _ => Format::Csv,
    };
    // --out: rows go to a temporary file beside it, renamed into place only when complete.
    let mut tmp = out_path.as_deref().map(AtomicFile::create).transpose()?;
    let sink: Box<dyn Write> = match &tmp {
        Some(t) => Box::new(std::io::BufWriter::new(t.reopen()?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let names: Vec<String> = shown.iter().map(|s| s.to_string()).collect();
    let mut writer = RowWriter::new(fmt, sink, names)?;
    let policy = ImagePolicy {
        resize: args.resize,
        convert_channels: args.convert_channels,
    };
    if args.resize {
        out.note("--resize: images are resampled, which weakens adversarial perturbations");
    }
    let pb = out.progress(total as u64, "detect");
    let (mut n, mut flagged, mut skipped) = (0usize, 0usize, 0usize);
    let t0 = std::time::Instant::now();
    let flags = crate::cli::flags_of::<DetectArgs>();
    let explain = move |e: &libre::Error| crate::cli::render_lib_error(e, &flags);
    let explain_row = explain.clone();
    let scorer = RowScorer::new(&shown, flag_score, threshold).explain_with(explain_row);
    let res = input::stream(&segs, plan, want, policy, &mut |chunk, b| {
        if let Some(Err(e)) = b
            .images
            .iter()
            .find(|i| i.is_err())
            .filter(|_| !args.skip_bad)
        {
            return Err(libre::Error::invalid(format!(
                "{} (pass --skip-bad to continue past bad inputs)",
                explain(e)
            )));
        }
        // Seeded by the global batch index: a shard draws what the unsharded run draws.
        let seed = args.seed.wrapping_add(chunk.index as i64);
        for r in scorer.rows(&det, &b, seed, device)? {
            n += 1;
            if r.status != "ok" {
                skipped += 1;
            }
            if r.flagged == Some(true) {
                flagged += 1;
            }
            writer
                .write(&r)
                .map_err(|e| libre::Error::io("writing rows", e))?;
        }
        pb.set_position(n as u64);
        Ok(())
    });
    pb.finish_and_clear();
    if let Err(e) = res {
        let ae = anyhow::Error::from(e);
        let broken_pipe = ae.chain().any(|l| {
            l.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if tmp.is_none() && broken_pipe {
            return Ok(()); // the reader went away (e.g. `| head`): stop quietly like other tools
        }
        return Err(ae);
    }
    writer.flush().or_else(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    drop(writer);
    if let (Some(t), Some(p)) = (tmp.take(), &out_path) {
        match shard {
            Some(s) => {
                let settings = json!({
                    "inputs": args.inputs, "files_from": args.files_from,
                    "inputs_digest": input::digest(&segs),
                    "weights_sha256": libre::cache::sha256_file(&path)?,
                    "scores": shown, "flag_score": flag_score, "threshold": threshold,
                    "samples": det.samples(), "mc_draws": args.mc_draws.mc_draws,
                    "precision": precision, "batch_size": args.batch_size, "seed": args.seed,
                    "skip_bad": args.skip_bad, "resize": args.resize,
                    "convert_channels": args.convert_channels, "format": fmt.name(),
                });
                let Value::Object(run) = settings else {
                    unreachable!("an object")
                };
                let counts = parts::Counts {
                    n,
                    flagged,
                    skipped,
                };
                parts::commit_part(t, p, s, &all, run.into_iter().collect(), counts)?;
            }
            None => t.commit()?,
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let rate = (n - skipped) as f64 / secs.max(1e-9);
    let summary = json!({
        "n": n, "flagged": flagged, "skipped": skipped, "score": flag_score,
        "threshold": threshold, "samples": det.samples(), "mc_draws": args.mc_draws.mc_draws,
        "precision": precision, "images_per_s": rate, "seconds": secs,
        "out": out_path, "shard": shard,
    });
    let inputs = if n == 1 { "input" } else { "inputs" };
    out.note(format!(
        "{n} {inputs}: {flagged} flagged ({} >= {}), {skipped} skipped; {rate:.1} images/s (S = {})",
        flag_score,
        threshold
            .map(|t| format!("{t:.6}"))
            .unwrap_or_else(|| "-".into()),
        det.samples()
    ));
    // --json: the summary is the final {"type":"result"} line (after any JSON rows).
    if out.json {
        out.result(summary, String::new);
    }
    if args.fail_on_detect && flagged > 0 {
        return Err(
            CheckFailed(format!("{flagged} of {n} {inputs} flagged as adversarial")).into(),
        );
    }
    Ok(())
}
