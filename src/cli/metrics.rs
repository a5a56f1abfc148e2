//! `libre metrics`: detection metrics from a CSV of scores (docs/design.md section 9; the
//! `libre-reports` crate does the work).
//!
//! The CSV has a header; label 1 = adversarial (positive), 0 = clean; higher score = more
//! suspicious. With `--group-by COL` the metrics are computed per value of that column. With
//! `--bootstrap N` each metric gets a 95% stratified percentile interval from N resamples
//! seeded by `--seed` (identical whatever the number of threads).
//!
//! With `--robust` it prints the robust-detection table instead ([`libre_reports::robust`];
//! docs/detection.md, "Adaptive evaluation"): per detector x attack x eps, at one threshold fixed
//! once (`--threshold`, or per detector at `--fpr` of its clean rows), attack success %, flagged
//! %, evaded % (misclassified and not flagged), robust detection accuracy and the worst case per
//! image, with the AUROC against the detector's clean rows beside them.
use super::Output;
use anyhow::Context;
use libre_reports::bootstrap::{bootstrap_detection, BootstrapConfig, DetectionCi};
use libre_reports::detection::DetectionMetrics;
use libre_reports::robust::{self, RobustRow, ScoredInput};
use libre_reports::tables::{read_scores, ScoreCsvSpec, Subset};
use libre_reports::ReportError;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// CSV of scores with a header row (label 1 = adversarial, 0 = clean).
    #[arg(long, value_name = "FILE.csv")]
    scores: PathBuf,
    /// Name of the label column.
    #[arg(long, value_name = "COL", default_value = "label")]
    label_col: String,
    /// Name of the score column (higher = more suspicious).
    #[arg(long, value_name = "COL", default_value = "score")]
    score_col: String,
    /// Compute the metrics separately for each value of this column (e.g. attack).
    #[arg(long, value_name = "COL")]
    group_by: Option<String>,
    /// Bootstrap confidence intervals (95%, percentile, stratified) from N resamples; with
    /// --robust, intervals of evaded % from N resamples of the images.
    #[arg(long, value_name = "N")]
    bootstrap: Option<usize>,
    /// Seed of the bootstrap.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// Which rows count: `all`, or `successful` (successful attacks on correctly classified
    /// clean inputs; needs the columns clean_correct and adv_success).
    #[arg(long, value_name = "SUBSET", default_value = "all",
          value_parser = ["all", "successful"])]
    subset: String,
    /// Print the robust-detection table instead of the AUROC table: per detector x attack x
    /// eps, at one threshold fixed once (flagged = score >= threshold), attack success %,
    /// flagged %, evaded % (misclassified and not flagged), robust detection accuracy (100 -
    /// evaded) and per eps the worst case per image over the attacks and the clean image, with
    /// the AUROC against the detector's clean rows beside them. Needs the columns image, attack
    /// (`clean` rows are the clean inputs), correct (0/1: the classifier is right on that row's
    /// input), the --score-col and --detector-col columns, and eps if present (libre
    /// evaluate's scores.csv has them all). Threshold: --threshold, else --fpr (0.05).
    #[arg(long, conflicts_with_all = ["group_by", "subset", "label_col"])]
    robust: bool,
    /// With --robust: one score threshold T for every detector and attack.
    #[arg(long, value_name = "T", requires = "robust", conflicts_with = "fpr",
          allow_negative_numbers = true, value_parser = parse_threshold)]
    threshold: Option<f64>,
    /// With --robust: per detector, the threshold at false-positive rate F (in (0, 1)) of that
    /// detector's clean rows, fixed once and used for every attack and eps [default: 0.05].
    #[arg(long, value_name = "F", requires = "robust", allow_negative_numbers = true,
          value_parser = parse_fpr)]
    fpr: Option<f64>,
    /// With --robust: the column naming the detector (one threshold per detector; libre
    /// evaluate's `model` column is MODEL/SCORE).
    #[arg(long, value_name = "COL", default_value = "model", requires = "robust")]
    detector_col: String,
}

struct GroupResult {
    name: Option<String>,
    metrics: DetectionMetrics,
    ci: Option<DetectionCi>,
}

fn metrics_json(g: &GroupResult) -> anyhow::Result<Value> {
    let mut v = serde_json::to_value(&g.metrics)?;
    if let Some(ci) = &g.ci {
        v["ci"] = serde_json::to_value(ci)?;
    }
    Ok(v)
}

/// A plain left-aligned-first-column text table.
fn render_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&width)
            .enumerate()
            .map(|(i, (c, &w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(header) + "\n";
    for r in rows {
        out += &(line(r) + "\n");
    }
    out
}

fn human(results: &[GroupResult], group_col: Option<&str>, header_note: &str) -> String {
    let ci_of = |ci: &Option<DetectionCi>, pick: fn(&DetectionCi) -> (f64, f64)| {
        ci.as_ref()
            .map(|c| {
                let (lo, hi) = pick(c);
                format!(" [{lo:.4}, {hi:.4}]")
            })
            .unwrap_or_default()
    };
    let mut header: Vec<String> = vec![group_col.unwrap_or("scores").to_string()];
    header.extend(
        [
            "n_adv", "n_clean", "AUROC", "AUPR-in", "AUPR-out", "TPR@1%", "TPR@5%", "TPR@10%",
            "TNR@95%", "det.acc",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|g| {
            let m = &g.metrics;
            let t = m.tpr_at_fpr.as_array();
            vec![
                g.name.clone().unwrap_or_else(|| "all".into()),
                m.n_pos.to_string(),
                m.n_neg.to_string(),
                format!(
                    "{:.4}{}",
                    m.auroc,
                    ci_of(&g.ci, |c| (c.auroc.lo, c.auroc.hi))
                ),
                format!(
                    "{:.4}{}",
                    m.aupr_in,
                    ci_of(&g.ci, |c| (c.aupr_in.lo, c.aupr_in.hi))
                ),
                format!(
                    "{:.4}{}",
                    m.aupr_out,
                    ci_of(&g.ci, |c| (c.aupr_out.lo, c.aupr_out.hi))
                ),
                format!("{:.4}", t[0]),
                format!("{:.4}", t[1]),
                format!("{:.4}", t[2]),
                format!("{:.4}", m.tnr_at_tpr95),
                format!("{:.4}", m.detection_accuracy),
            ]
        })
        .collect();
    format!("{header_note}\n{}", render_table(&header, &rows))
}

pub fn run(args: Args, out: Output) -> anyhow::Result<()> {
    if args.robust {
        return run_robust(args, out);
    }
    let subset: Subset = args.subset.parse()?;
    let spec = ScoreCsvSpec {
        label_col: args.label_col.clone(),
        score_col: args.score_col.clone(),
        group_by: args.group_by.iter().cloned().collect(),
        subset,
        label_hint: "choose the label column with --label-col".into(),
        score_hint: "choose the score column with --score-col".into(),
        group_hint: "check --group-by".into(),
    };
    let cfg = args.bootstrap.map(|n| BootstrapConfig {
        n_resamples: n,
        seed: args.seed,
        level: 0.95,
    });
    if let Some(c) = &cfg {
        c.validate()?;
    }
    let table = read_scores(&args.scores, &spec)?;
    if table.groups.is_empty() {
        anyhow::bail!(
            "{}: all {} rows were dropped by --subset {subset}; nothing to evaluate",
            args.scores.display(),
            table.n_rows
        );
    }
    let mut results = Vec::new();
    for g in &table.groups {
        let name = args.group_by.as_ref().map(|_| g.key[0].clone());
        let what = match (&args.group_by, &name) {
            (Some(col), Some(v)) => format!("{}: group {col}={v}", args.scores.display()),
            _ => args.scores.display().to_string(),
        };
        let metrics = DetectionMetrics::compute(&g.scores, &g.labels).map_err(|e| match e {
            // Name the rows' file (and group); the library error only knows counts.
            ReportError::OneClass { .. } => anyhow::anyhow!("{what}: {e}"),
            other => anyhow::Error::new(other).context(what.clone()),
        })?;
        let ci = match &cfg {
            Some(c) => Some(
                bootstrap_detection(&g.scores, &g.labels, c)
                    .with_context(|| format!("bootstrap of {what}"))?,
            ),
            None => None,
        };
        results.push(GroupResult { name, metrics, ci });
    }
    let mut note = format!(
        "{}: {} rows; samples: {} (--subset {subset})",
        args.scores.display(),
        table.n_rows,
        subset.describe()
    );
    if table.n_dropped > 0 {
        note += &format!(", {} rows dropped", table.n_dropped);
    }
    if let Some(c) = &cfg {
        note += &format!(
            "; 95% bootstrap intervals from {} stratified resamples, seed {}",
            c.n_resamples, c.seed
        );
    }
    let data = if args.group_by.is_none() {
        let mut v = metrics_json(&results[0])?;
        v["subset"] = json!(subset);
        v
    } else {
        let groups = results
            .iter()
            .map(|g| {
                let mut v = metrics_json(g)?;
                v["group"] = json!(g.name);
                Ok(v)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        json!({ "group_by": args.group_by, "subset": subset, "groups": groups })
    };
    out.result(data, || human(&results, args.group_by.as_deref(), &note));
    Ok(())
}

// ---- --robust: the robust-detection table (libre_reports::robust) -----------------------------

/// `--fpr`: a false-positive rate strictly inside (0, 1).
fn parse_fpr(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number; give a false-positive rate in (0, 1)"))?;
    if !(v > 0.0 && v < 1.0) {
        return Err(format!(
            "{v} is outside (0, 1); give a false-positive rate such as 0.05"
        ));
    }
    Ok(v)
}

/// `--threshold`: any finite number.
fn parse_threshold(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(format!("{v} is not finite; give a finite score threshold")),
        Err(_) => Err(format!("`{s}` is not a number")),
    }
}

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

/// AUROC of each detector x attack x eps against that detector's clean rows (beside the robust
/// numbers, as the report shows it); absent without clean rows or for clean / worst-case rows.
fn aurocs(rows: &[ScoredInput]) -> anyhow::Result<Vec<((String, String, String), f64)>> {
    let mut clean: Vec<(&str, Vec<f64>)> = Vec::new();
    let mut attacked: Vec<((&str, &str, &str), Vec<f64>)> = Vec::new();
    for r in rows {
        if r.attack == robust::CLEAN {
            match clean.iter_mut().find(|(d, _)| *d == r.detector) {
                Some((_, v)) => v.push(r.score),
                None => clean.push((&r.detector, vec![r.score])),
            }
        } else {
            let k = (r.detector.as_str(), r.attack.as_str(), r.eps.as_str());
            match attacked.iter_mut().find(|(key, _)| *key == k) {
                Some((_, v)) => v.push(r.score),
                None => attacked.push((k, vec![r.score])),
            }
        }
    }
    let mut out = Vec::new();
    for ((d, a, e), adv) in attacked {
        let Some((_, cl)) = clean.iter().find(|(cd, _)| *cd == d) else {
            continue;
        };
        let scores: Vec<f64> = adv.iter().chain(cl).copied().collect();
        let labels: Vec<bool> = (0..scores.len()).map(|i| i < adv.len()).collect();
        let m = DetectionMetrics::compute(&scores, &labels)?;
        out.push(((d.to_string(), a.to_string(), e.to_string()), m.auroc));
    }
    Ok(out)
}

fn run_robust(args: Args, out: Output) -> anyhow::Result<()> {
    // Bad values are refused before the file is read.
    let cfg = args.bootstrap.map(|n| BootstrapConfig {
        n_resamples: n,
        seed: args.seed,
        level: 0.95,
    });
    if let Some(c) = &cfg {
        c.validate()?;
    }
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
    let aurocs = aurocs(&rows)?;
    let auroc_of = |r: &RobustRow| {
        aurocs
            .iter()
            .find(|((d, a, e), _)| *d == r.detector && *a == r.attack && *e == r.eps)
            .map(|(_, v)| *v)
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
