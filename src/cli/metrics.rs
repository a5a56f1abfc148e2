//! `libre metrics`: detection metrics from a CSV of scores (docs/design.md section 9; the
//! `libre-reports` crate does the work).
//!
//! The CSV has a header; label 1 = adversarial (positive), 0 = clean; higher score = more
//! suspicious. With `--group-by COL` the metrics are computed per value of that column. With
//! `--bootstrap N` each metric gets a 95% stratified percentile interval from N resamples
//! seeded by `--seed` (identical whatever the number of threads).
use super::Output;
use anyhow::Context;
use libre_reports::bootstrap::{bootstrap_detection, BootstrapConfig, DetectionCi};
use libre_reports::detection::DetectionMetrics;
use libre_reports::tables::{read_scores, ScoreCsvSpec, Subset};
use libre_reports::ReportError;
use serde_json::{json, Value};
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
    /// Bootstrap confidence intervals (95%, percentile, stratified) from N resamples.
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
