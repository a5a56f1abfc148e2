//! `libre metrics --robust`: the robust-detection table ([`libre_reports::robust`];
//! docs/detection.md, "Adaptive evaluation") of a scores CSV, with each row's AUROC beside it.

use super::Args;
use crate::cli::Output;
use anyhow::Context;
use libre_reports::robust::{self, RobustRow, ScoredInput};
use libre_reports::text::render_table;
use libre_reports::ReportError;
use serde_json::json;
use std::collections::HashMap;

/// A threshold for the table: plain decimals in the usual range, else scientific.
fn fmt_threshold(t: f64) -> String {
    if t == 0.0 || (1e-3..1e4).contains(&t.abs()) {
        format!("{t:.4}")
    } else {
        format!("{t:.3e}")
    }
}

/// The default target FPR of `--robust` without `--threshold` or `--fpr`.
const DEFAULT_FPR: f64 = 0.05;

/// Reads the rows of `--robust` (the reader is the reports crate's; the hints name this
/// command's flags).
fn read_scored_inputs(args: &Args) -> Result<Vec<ScoredInput>, ReportError> {
    robust::read_scored_inputs(
        &args.scores,
        &robust::InputColumns {
            detector: &args.detector_col,
            score: &args.score_col,
            need_hint: "--robust needs the columns image, attack (`clean` rows give the \
                        threshold), correct (0/1) and the score and detector columns",
            correct_hint: "--robust needs it: 1 where the classifier is right on that row's \
                           input, else 0 (libre evaluate's scores.csv has it)",
            score_hint: "choose the score column with --score-col",
            detector_hint: "choose the detector column with --detector-col",
        },
    )
}

/// `libre metrics --robust`.
pub fn run_robust(args: Args, out: Output) -> anyhow::Result<()> {
    // Bad values are refused before the file is read.
    let cfg = args.bootstrap_config()?;
    let rows = read_scored_inputs(&args)?;
    let fpr = args.fpr.unwrap_or(DEFAULT_FPR);
    let thresholds = match args.threshold {
        Some(t) => {
            let given: HashMap<String, f64> =
                rows.iter().map(|r| (r.detector.clone(), t)).collect();
            let mut th = robust::thresholds(&rows, &given, fpr)?;
            for t in &mut th {
                t.source = "--threshold".into();
            }
            th
        }
        None => robust::thresholds(&rows, &HashMap::new(), fpr).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e}; --fpr fixes each detector's threshold from its clean rows (attack \
                 `clean`, column --detector-col {}), or give one with --threshold",
                args.scores.display(),
                args.detector_col
            )
        })?,
    };
    let table = robust::robust_rows(&rows, &thresholds, cfg.as_ref())
        .with_context(|| format!("{}: robust detection", args.scores.display()))?;
    let aurocs = robust::aurocs_against_clean(&rows)?;
    let auroc_of = |r: &RobustRow| {
        aurocs
            .iter()
            .find(|a| a.detector == r.detector && a.attack == r.attack && a.eps == r.eps)
            .map(|a| a.auroc)
    };
    let mut note = format!(
        "{}: {} rows; robust detection: evaded = misclassified and score below the threshold \
         (flagged = score >= threshold), robust detection accuracy = 100 - evaded, over all \
         images; worst case = per image, any attack at that eps or the clean image; ",
        args.scores.display(),
        rows.len()
    );
    note += &match args.threshold {
        Some(t) => format!("threshold {t} for every detector (--threshold)"),
        None => format!(
            "one threshold per detector at {fpr} FPR of its clean rows, fixed once for every \
             attack (--fpr)"
        ),
    };
    if let Some(c) = &cfg {
        note += &format!(
            "; 95% bootstrap intervals of evaded from {} resamples of images, seed {}",
            c.n_resamples, c.seed
        );
    }
    let json_rows = table
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r)?;
            v["auroc"] = json!(auroc_of(r));
            Ok(v)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let data = json!({
        "robust": true,
        "detector_col": args.detector_col,
        "score_col": args.score_col,
        "fpr": args.threshold.is_none().then_some(fpr),
        "threshold": args.threshold,
        "bootstrap": cfg.as_ref().map(|c| c.n_resamples),
        "thresholds": thresholds,
        "rows": json_rows,
    });
    out.result(data, || {
        let pct = |v: f64| format!("{v:.1}");
        let header: Vec<String> = [
            &*args.detector_col,
            "attack",
            "eps",
            "n",
            "threshold",
            "success%",
            "flagged%",
            "evaded%",
            "robust acc%",
            "AUROC",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let body: Vec<Vec<String>> = table
            .iter()
            .map(|r| {
                let ci = match (r.evaded_lo, r.evaded_hi) {
                    (Some(lo), Some(hi)) => format!(" [{lo:.1}, {hi:.1}]"),
                    _ => String::new(),
                };
                vec![
                    r.detector.clone(),
                    r.attack.clone(),
                    r.eps.clone(),
                    r.n.to_string(),
                    fmt_threshold(r.threshold),
                    pct(r.attack_success),
                    r.flagged.map(pct).unwrap_or_else(|| "-".into()),
                    format!("{}{ci}", pct(r.evaded)),
                    pct(r.robust_detection_accuracy),
                    auroc_of(r)
                        .map(|a| format!("{a:.4}"))
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        format!("{note}\n{}", render_table(&header, &body))
    });
    Ok(())
}
