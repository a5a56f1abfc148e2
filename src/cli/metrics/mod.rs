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
mod args;
mod robust;

pub use args::Args;

use crate::cli::Output;
use anyhow::Context;
use libre_reports::bootstrap::{bootstrap_detection, DetectionCi};
use libre_reports::detection::DetectionMetrics;
use libre_reports::tables::{read_scores, ScoreCsvSpec, Subset};
use libre_reports::text::render_table;
use libre_reports::ReportError;
use serde_json::{json, Value};

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
        return robust::run_robust(args, out);
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
    let cfg = args.bootstrap_config()?;
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
