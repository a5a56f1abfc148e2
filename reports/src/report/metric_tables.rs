//! The computed metrics as tables: the rows of `detection.csv`, and the formatted text tables
//! that index.html and summary.md both show.
use super::{ReportOptions, RunData};
use crate::tables::{DetectionRow, Subset};
use std::fmt::Write as _;

/// `detection.csv` rows of the computed groups.
pub fn detection_rows(run: &RunData, subset: Subset) -> Vec<DetectionRow> {
    run.detection
        .iter()
        .map(|g| {
            let m = &g.metrics;
            DetectionRow {
                subset,
                model: g.model.clone(),
                attack: g.attack.clone(),
                eps: g.eps.clone(),
                n_pos: m.n_pos,
                n_neg: m.n_neg,
                auroc: m.auroc,
                aupr_in: m.aupr_in,
                aupr_out: m.aupr_out,
                tpr_at_fpr_0_01: m.tpr_at_fpr.fpr_0_01,
                tpr_at_fpr_0_05: m.tpr_at_fpr.fpr_0_05,
                tpr_at_fpr_0_10: m.tpr_at_fpr.fpr_0_10,
                tnr_at_tpr95: m.tnr_at_tpr95,
                detection_accuracy: m.detection_accuracy,
                detection_accuracy_at_fpr05: m.detection_accuracy_at_fpr05,
                auroc_lo: g.ci.as_ref().map(|c| c.auroc.lo),
                auroc_hi: g.ci.as_ref().map(|c| c.auroc.hi),
            }
        })
        .collect()
}

/// A rendered table: header and rows of already formatted cells.
pub(super) struct TextTable {
    pub(super) header: Vec<String>,
    pub(super) rows: Vec<Vec<String>>,
}

pub(super) fn detection_table(run: &RunData) -> TextTable {
    let with_ci = run.detection.iter().any(|g| g.ci.is_some());
    let mut header: Vec<String> = ["model", "attack", "eps", "n adv", "n clean", "AUROC"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if with_ci {
        let level = run
            .detection
            .iter()
            .find_map(|g| g.ci.as_ref())
            .map_or(0.95, |c| c.level);
        header.push(format!("AUROC {:.0}% CI", level * 100.0));
    }
    header.extend(
        [
            "AUPR-in",
            "AUPR-out",
            "TPR@FPR1%",
            "TPR@FPR5%",
            "TPR@FPR10%",
            "TNR@TPR95%",
            "det. acc.",
            "det. acc. @FPR5%",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let rows = run
        .detection
        .iter()
        .map(|g| {
            let m = &g.metrics;
            let mut r = vec![
                g.model.to_uppercase(),
                g.attack.clone(),
                g.eps.clone(),
                m.n_pos.to_string(),
                m.n_neg.to_string(),
                format!("{:.4}", m.auroc),
            ];
            if with_ci {
                r.push(g.ci.as_ref().map_or(String::new(), |c| {
                    format!("[{:.4}, {:.4}]", c.auroc.lo, c.auroc.hi)
                }));
            }
            let t = m.tpr_at_fpr.as_array();
            r.extend([
                format!("{:.4}", m.aupr_in),
                format!("{:.4}", m.aupr_out),
                format!("{:.4}", t[0]),
                format!("{:.4}", t[1]),
                format!("{:.4}", t[2]),
                format!("{:.4}", m.tnr_at_tpr95),
                format!("{:.4}", m.detection_accuracy),
                format!("{:.4}", m.detection_accuracy_at_fpr05),
            ]);
            r
        })
        .collect();
    TextTable { header, rows }
}

pub(super) fn classification_table(run: &RunData) -> TextTable {
    TextTable {
        header: [
            "model",
            "n",
            "top-1",
            "top-5",
            "NLL",
            "Brier",
            "ECE (15 bins)",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        rows: run
            .classification
            .iter()
            .map(|c| {
                vec![
                    c.model.to_uppercase(),
                    c.n.to_string(),
                    format!("{:.4}", c.top1),
                    format!("{:.4}", c.top5),
                    format!("{:.4}", c.nll),
                    format!("{:.4}", c.brier),
                    format!("{:.4}", c.ece),
                ]
            })
            .collect(),
    }
}

/// The caption of the detection table: what the columns mean, which samples entered the metrics
/// (and how many rows the subset dropped), and how the intervals were computed.
pub(super) fn detection_caption(run: &RunData, opts: &ReportOptions) -> String {
    let mut caption = format!(
        "Detection (positive = adversarial, higher score = more suspicious). Samples: {} \
         (subset `{}`).",
        opts.subset.describe(),
        opts.subset
    );
    if run.n_dropped > 0 {
        let _ = write!(
            caption,
            " {} rows outside the subset were dropped.",
            run.n_dropped
        );
    }
    if let Some(b) = opts.bootstrap {
        let _ = write!(
            caption,
            " Intervals: stratified percentile bootstrap, {} resamples, level {}, seed {}.",
            b.n_resamples, b.level, b.seed
        );
    }
    caption
}

/// The caption of the classification table.
pub(super) const CLASSIFICATION_CAPTION: &str =
    "Classification of clean inputs with the MC-averaged predictive.";
