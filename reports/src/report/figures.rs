//! The report's figures: which ones a run gets, and the data each one plots.
use super::load::first_seen_index;
use super::{DetectionGroup, RunData};
use crate::classification::ReliabilityBin;
use crate::detection::roc_curve;
use crate::error::Result;
use crate::plots::{EpsPanel, Figure, HistPanel, McSeries, ReliabilitySeries, RocPanel, RocSeries};
use crate::tables::ReliabilityRow;

fn ordered_models<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut v = Vec::new();
    for n in names {
        first_seen_index(&mut v, n);
    }
    v
}

/// The report's figures, in display order, with a caption each.
pub fn figures(run: &RunData) -> Result<Vec<(Figure, String)>> {
    let mut figs = Vec::new();
    if !run.detection.is_empty() {
        // Panels keyed by (attack, eps) in the group order.
        let mut keys: Vec<(String, String)> = Vec::new();
        for g in &run.detection {
            let k = (g.attack.clone(), g.eps.clone());
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let models = ordered_models(run.detection.iter().map(|g| g.model.as_str()));
        fn in_panel<'a>(
            det: &'a [DetectionGroup],
            k: &'a (String, String),
        ) -> impl Iterator<Item = &'a DetectionGroup> + 'a {
            det.iter().filter(move |g| g.attack == k.0 && g.eps == k.1)
        }
        let mut roc = Vec::new();
        let mut hist = Vec::new();
        for k in &keys {
            let mut series = Vec::new();
            for g in in_panel(&run.detection, k) {
                series.push(RocSeries {
                    model: g.model.clone(),
                    curve: roc_curve(&g.scores, &g.labels)?.thin(400),
                    auroc: g.metrics.auroc,
                });
            }
            roc.push(RocPanel {
                title: format!("{} eps={}", k.0, k.1),
                series,
            });
            for m in &models {
                if let Some(g) = in_panel(&run.detection, k).find(|g| &g.model == m) {
                    let pick = |want: bool| {
                        g.scores
                            .iter()
                            .zip(&g.labels)
                            .filter(|p| *p.1 == want)
                            .map(|p| *p.0)
                            .collect::<Vec<_>>()
                    };
                    hist.push(HistPanel {
                        title: format!("{} / {} eps={}", m.to_uppercase(), k.0, k.1),
                        clean: pick(false),
                        adversarial: pick(true),
                    });
                }
            }
        }
        figs.push((
            Figure::Roc {
                panels: roc,
                cols: 3,
            },
            "ROC curves, one panel per attack and radius.".to_string(),
        ));
        figs.push((
            Figure::ScoreHistograms {
                panels: hist,
                cols: models.len(),
            },
            "Detection-score histograms, clean vs adversarial; models side by side.".to_string(),
        ));
        // AUROC vs eps only where an attack was run at several radii.
        let attacks = ordered_models(run.detection.iter().map(|g| g.attack.as_str()));
        let mut eps_panels = Vec::new();
        for a in &attacks {
            let groups: Vec<&DetectionGroup> =
                run.detection.iter().filter(|g| &g.attack == a).collect();
            let n_eps = ordered_models(groups.iter().map(|g| g.eps.as_str())).len();
            if n_eps < 2 {
                continue;
            }
            let series = models
                .iter()
                .map(|m| {
                    let pts = groups
                        .iter()
                        .filter(|g| &g.model == m)
                        .map(|g| (g.eps_value, g.metrics.auroc))
                        .collect::<Vec<_>>();
                    (m.clone(), pts)
                })
                .filter(|s| !s.1.is_empty())
                .collect();
            eps_panels.push(EpsPanel {
                title: a.clone(),
                series,
            });
        }
        if !eps_panels.is_empty() {
            figs.push((
                Figure::AurocVsEps {
                    panels: eps_panels,
                    cols: 3,
                },
                "AUROC versus attack radius eps.".to_string(),
            ));
        }
    }
    if !run.reliability.is_empty() {
        let models = ordered_models(run.reliability.iter().map(|r| r.model.as_str()));
        let series = models
            .iter()
            .map(|m| {
                let mut rows: Vec<&ReliabilityRow> =
                    run.reliability.iter().filter(|r| &r.model == m).collect();
                rows.sort_by_key(|r| r.bin);
                let bins: Vec<ReliabilityBin> = rows
                    .iter()
                    .map(|r| ReliabilityBin {
                        lo: r.lo,
                        hi: r.hi,
                        count: r.count,
                        confidence: r.confidence,
                        accuracy: r.accuracy,
                    })
                    .collect();
                let n: usize = bins.iter().map(|b| b.count).sum();
                // Prefer the ECE the evaluation reported; otherwise recompute it from the bins.
                let ece = run
                    .classification
                    .iter()
                    .find(|c| &c.model == m)
                    .map(|c| c.ece)
                    .unwrap_or_else(|| {
                        bins.iter()
                            .map(|b| {
                                b.count as f64 / n.max(1) as f64 * (b.accuracy - b.confidence).abs()
                            })
                            .sum()
                    });
                ReliabilitySeries {
                    model: m.clone(),
                    bins,
                    ece,
                }
            })
            .collect();
        figs.push((
            Figure::Reliability { models: series },
            "Reliability diagrams: accuracy per confidence bin (bars), mean confidence (dots), \
             perfect calibration (diagonal)."
                .to_string(),
        ));
    }
    if !run.mc_curve.is_empty() {
        let models = ordered_models(run.mc_curve.iter().map(|r| r.model.as_str()));
        let series = models
            .iter()
            .map(|m| {
                let mut points: Vec<(usize, f64, f64)> = run
                    .mc_curve
                    .iter()
                    .filter(|r| &r.model == m)
                    .map(|r| (r.n_samples, r.top1, r.nll))
                    .collect();
                points.sort_by_key(|p| p.0);
                McSeries {
                    model: m.clone(),
                    points,
                }
            })
            .collect();
        figs.push((
            Figure::McCurve { series },
            "Top-1 accuracy and NLL versus the number of MC samples.".to_string(),
        ));
    }
    Ok(figs)
}
