//! Report assembly (SPEC section 6): from the CSV tables of a run directory to a report
//! directory with `index.html` (self-contained: tables plus the figures inlined as SVG),
//! `summary.md`, the CSV tables, `figures/*.svg` (and `*.png` on request) and `manifest.json`
//! (inputs with sizes and SHA-256, options, seed, versions).
//!
//! The report is written into a fresh temporary directory beside the destination and renamed
//! into place at the end, so a crash or an error never leaves a half-written report (an older
//! report at the destination survives until the new one is complete).
//!
//! Inputs (schema in [`crate::tables`]): `scores.csv` (detection), `classification.csv`,
//! `reliability.csv`, `mc_curve.csv`; each is optional, but at least one must be present.
//! Detection metrics are computed per (model, attack, eps) on the chosen [`Subset`], which is
//! printed with every detection table.
use crate::bootstrap::{bootstrap_detection, BootstrapConfig, DetectionCi};
use crate::classification::ReliabilityBin;
use crate::detection::{roc_curve, DetectionMetrics};
use crate::error::{ReportError, Result};
use crate::plots::{EpsPanel, Figure, HistPanel, McSeries, ReliabilitySeries, RocPanel, RocSeries};
use crate::tables::{
    self, ClassificationRow, DetectionRow, McCurveRow, ReliabilityRow, ScoreCsvSpec, Subset,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// File names of the input tables inside a run directory.
pub const SCORES_CSV: &str = "scores.csv";
pub const CLASSIFICATION_CSV: &str = "classification.csv";
pub const RELIABILITY_CSV: &str = "reliability.csv";
pub const MC_CURVE_CSV: &str = "mc_curve.csv";
/// Written by the report.
pub const DETECTION_CSV: &str = "detection.csv";

/// Attack names that mark clean rows shared by every attack of a model.
const SHARED_CLEAN: [&str; 2] = ["", "clean"];

/// How to build a report.
#[derive(Debug, Clone, Serialize)]
pub struct ReportOptions {
    pub title: String,
    pub subset: Subset,
    /// Percentile intervals per detection group; `None` for point estimates only.
    pub bootstrap: Option<BootstrapConfig>,
    /// Also write `figures/*.png`.
    pub png: bool,
    /// Who made the report, e.g. "libre 0.1.0 (abc1234)"; goes into the manifest and footer.
    pub generator: String,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            title: "LiBRe report".into(),
            subset: Subset::All,
            bootstrap: None,
            png: false,
            generator: format!("libre-reports {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// Scores and metrics of one (model, attack, eps) group.
#[derive(Debug, Clone)]
pub struct DetectionGroup {
    pub model: String,
    pub attack: String,
    /// As written in the CSV (for display and keys) and parsed (for plotting).
    pub eps: String,
    pub eps_value: f64,
    pub scores: Vec<f64>,
    pub labels: Vec<bool>,
    pub metrics: DetectionMetrics,
    pub ci: Option<DetectionCi>,
}

/// Everything read from a run directory.
#[derive(Debug, Clone, Default)]
pub struct RunData {
    pub detection: Vec<DetectionGroup>,
    pub classification: Vec<ClassificationRow>,
    pub reliability: Vec<ReliabilityRow>,
    pub mc_curve: Vec<McCurveRow>,
    /// The input files that were present (for the manifest).
    pub inputs: Vec<PathBuf>,
    /// Rows of scores.csv dropped by the subset.
    pub n_dropped: usize,
}

fn first_seen_index(list: &mut Vec<String>, s: &str) -> usize {
    match list.iter().position(|x| x == s) {
        Some(i) => i,
        None => {
            list.push(s.to_string());
            list.len() - 1
        }
    }
}

/// Reads `scores.csv` and computes the metrics (and intervals) of every (model, attack, eps).
pub fn detection_groups(
    path: &Path,
    subset: Subset,
    bootstrap: Option<&BootstrapConfig>,
) -> Result<(Vec<DetectionGroup>, usize)> {
    let spec = ScoreCsvSpec {
        group_by: vec!["model".into(), "attack".into(), "eps".into()],
        subset,
        ..Default::default()
    };
    let table = tables::read_scores(path, &spec)?;
    // Clean rows shared by all attacks of a model.
    let mut shared: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for g in &table.groups {
        if SHARED_CLEAN.contains(&g.key[1].as_str()) {
            if let Some(i) = g.labels.iter().position(|&l| l) {
                return Err(ReportError::BadCell {
                    path: path.into(),
                    line: g.lines[i],
                    column: "attack".into(),
                    problem: format!(
                        "an adversarial row (label 1) needs an attack name, not `{}`",
                        g.key[1]
                    ),
                });
            }
            shared
                .entry(g.key[0].clone())
                .or_default()
                .extend(&g.scores);
        }
    }
    let (mut models, mut attacks) = (Vec::new(), Vec::new());
    let mut out = Vec::new();
    for g in &table.groups {
        let (model, attack, eps) = (&g.key[0], &g.key[1], &g.key[2]);
        if SHARED_CLEAN.contains(&attack.as_str()) {
            continue;
        }
        let eps_value: f64 = eps.parse().map_err(|_| ReportError::BadCell {
            path: path.into(),
            line: g.lines[0],
            column: "eps".into(),
            problem: format!("`{eps}` is not a number"),
        })?;
        let mut scores = g.scores.clone();
        let mut labels = g.labels.clone();
        if let Some(clean) = shared.get(model) {
            scores.extend(clean);
            labels.resize(labels.len() + clean.len(), false);
        }
        let context = |e: ReportError| match e {
            ReportError::OneClass { n_pos, n_neg } => ReportError::InvalidArgument {
                name: "scores.csv group",
                value: format!("model={model} attack={attack} eps={eps}"),
                constraint: if n_pos == 0 {
                    "has no adversarial (label 1) rows in this subset"
                } else {
                    let _ = n_neg;
                    "has no clean (label 0) rows, neither its own nor shared (attack `clean`)"
                },
            },
            other => other,
        };
        let metrics = DetectionMetrics::compute(&scores, &labels).map_err(context)?;
        let ci = match bootstrap {
            Some(cfg) => Some(bootstrap_detection(&scores, &labels, cfg)?),
            None => None,
        };
        first_seen_index(&mut models, model);
        first_seen_index(&mut attacks, attack);
        out.push(DetectionGroup {
            model: model.clone(),
            attack: attack.clone(),
            eps: eps.clone(),
            eps_value,
            scores,
            labels,
            metrics,
            ci,
        });
    }
    if out.is_empty() {
        return Err(ReportError::Empty {
            what: format!(
                "{} has no adversarial groups after the subset",
                path.display()
            ),
        });
    }
    // Attack in order of appearance, then eps ascending, then model in order of appearance.
    let pos = |list: &Vec<String>, s: &str| list.iter().position(|x| x == s).unwrap_or(0);
    out.sort_by(|a, b| {
        pos(&attacks, &a.attack)
            .cmp(&pos(&attacks, &b.attack))
            .then(a.eps_value.total_cmp(&b.eps_value))
            .then(pos(&models, &a.model).cmp(&pos(&models, &b.model)))
    });
    Ok((out, table.n_dropped))
}

/// Reads every table present in `run_dir` (at least one must be).
pub fn load_run(run_dir: &Path, opts: &ReportOptions) -> Result<RunData> {
    if !run_dir.is_dir() {
        return Err(ReportError::io(
            run_dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        ));
    }
    let mut run = RunData::default();
    let p = run_dir.join(SCORES_CSV);
    if p.exists() {
        let (groups, dropped) = detection_groups(&p, opts.subset, opts.bootstrap.as_ref())?;
        run.detection = groups;
        run.n_dropped = dropped;
        run.inputs.push(p);
    }
    let p = run_dir.join(CLASSIFICATION_CSV);
    if p.exists() {
        run.classification = tables::read_rows(&p)?;
        run.inputs.push(p);
    }
    let p = run_dir.join(RELIABILITY_CSV);
    if p.exists() {
        run.reliability = tables::read_rows(&p)?;
        run.inputs.push(p);
    }
    let p = run_dir.join(MC_CURVE_CSV);
    if p.exists() {
        run.mc_curve = tables::read_rows(&p)?;
        run.inputs.push(p);
    }
    if run.inputs.is_empty() {
        return Err(ReportError::Empty {
            what: format!(
                "{}: none of {SCORES_CSV}, {CLASSIFICATION_CSV}, {RELIABILITY_CSV}, \
                 {MC_CURVE_CSV} found",
                run_dir.display()
            ),
        });
    }
    Ok(run)
}

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
struct TextTable {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn detection_table(run: &RunData) -> TextTable {
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

fn classification_table(run: &RunData) -> TextTable {
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

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn html_table(t: &TextTable, caption: &str) -> String {
    let mut s = String::from("<div class=\"tw\"><table>\n");
    let _ = writeln!(s, "<caption>{}</caption>", html_escape(caption));
    s.push_str("<thead><tr>");
    for h in &t.header {
        let _ = write!(s, "<th>{}</th>", html_escape(h));
    }
    s.push_str("</tr></thead>\n<tbody>\n");
    for r in &t.rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{}</td>", html_escape(c));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</tbody></table></div>\n");
    s
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

fn md_table(t: &TextTable) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| {} |",
        t.header
            .iter()
            .map(|h| md_cell(h))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(s, "|{}", "---|".repeat(t.header.len()));
    for r in &t.rows {
        let _ = writeln!(
            s,
            "| {} |",
            r.iter().map(|c| md_cell(c)).collect::<Vec<_>>().join(" | ")
        );
    }
    s
}

const CSS: &str = "body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:2em auto;\
max-width:1300px;color:#222;padding:0 1em}h1{font-size:1.6em}h2{margin-top:1.6em;\
border-bottom:1px solid #ccc}.tw{overflow-x:auto}table{border-collapse:collapse;margin:1em 0;\
font-size:0.82em}caption{text-align:left;font-style:italic;padding-bottom:.4em}th,td{border:1px \
solid #bbb;padding:.25em .45em;text-align:right}td{white-space:nowrap}th{background:#f0f0f0}td:nth-child(-n+3){text-align:left}\
figure{margin:1em 0}figcaption{font-style:italic;color:#555}.meta{color:#666;font-size:.85em}\
svg{max-width:100%;height:auto}";

/// What a written report contains.
#[derive(Debug, Clone, Serialize)]
pub struct ReportSummary {
    pub out_dir: PathBuf,
    pub n_detection_groups: usize,
    pub tables: Vec<String>,
    pub figures: Vec<String>,
    pub rows_dropped_by_subset: usize,
}

#[derive(Serialize)]
struct ManifestInput {
    file: String,
    bytes: u64,
    sha256: String,
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let bytes = std::fs::read(path).map_err(|e| ReportError::io(path, e))?;
    let digest = Sha256::digest(&bytes);
    let hex = digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    Ok((bytes.len() as u64, hex))
}

fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, contents).map_err(|e| ReportError::io(path, e))
}

/// Writes the report files of `run` into the (existing, empty) directory `dir`.
fn write_contents(run: &RunData, dir: &Path, opts: &ReportOptions) -> Result<ReportSummary> {
    let fig_dir = dir.join("figures");
    std::fs::create_dir(&fig_dir).map_err(|e| ReportError::io(&fig_dir, e))?;
    let mut tables_written = Vec::new();
    if !run.detection.is_empty() {
        tables::write_rows(&dir.join(DETECTION_CSV), &detection_rows(run, opts.subset))?;
        tables_written.push(DETECTION_CSV.to_string());
    }
    if !run.classification.is_empty() {
        tables::write_rows(&dir.join(CLASSIFICATION_CSV), &run.classification)?;
        tables_written.push(CLASSIFICATION_CSV.to_string());
    }
    if !run.reliability.is_empty() {
        tables::write_rows(&dir.join(RELIABILITY_CSV), &run.reliability)?;
        tables_written.push(RELIABILITY_CSV.to_string());
    }
    if !run.mc_curve.is_empty() {
        tables::write_rows(&dir.join(MC_CURVE_CSV), &run.mc_curve)?;
        tables_written.push(MC_CURVE_CSV.to_string());
    }

    let figs = figures(run)?;
    let mut fig_files = Vec::new();
    let mut fig_html = String::new();
    let mut fig_md = String::new();
    for (fig, caption) in &figs {
        let svg = fig.to_svg()?;
        let name = format!("figures/{}.svg", fig.name());
        write_file(&dir.join(&name), &svg)?;
        fig_files.push(name.clone());
        if opts.png {
            let png = format!("figures/{}.png", fig.name());
            fig.write_png(&dir.join(&png))?;
            fig_files.push(png);
        }
        let _ = writeln!(
            fig_html,
            "<figure id=\"fig-{}\">\n{}\n<figcaption>{}</figcaption>\n</figure>",
            fig.name(),
            svg.trim(),
            html_escape(caption)
        );
        let _ = writeln!(fig_md, "![{caption}]({name})\n");
    }

    let subset_line = format!(
        "Samples: {} (subset `{}`).",
        opts.subset.describe(),
        opts.subset
    );
    let ci_line = opts.bootstrap.map(|b| {
        format!(
            "Intervals: stratified percentile bootstrap, {} resamples, level {}, seed {}.",
            b.n_resamples, b.level, b.seed
        )
    });
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{t}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{t}</h1>\n",
        t = html_escape(&opts.title)
    );
    let mut md = format!("# {}\n\n", opts.title);
    if !run.detection.is_empty() {
        let t = detection_table(run);
        let mut caption = format!(
            "Detection (positive = adversarial, higher score = more suspicious). {subset_line}"
        );
        if run.n_dropped > 0 {
            let _ = write!(
                caption,
                " {} rows outside the subset were dropped.",
                run.n_dropped
            );
        }
        if let Some(c) = &ci_line {
            caption.push(' ');
            caption.push_str(c);
        }
        html.push_str("<h2>Adversarial detection</h2>\n");
        html.push_str(&html_table(&t, &caption));
        let _ = write!(
            md,
            "## Adversarial detection\n\n{caption}\n\n{}\n",
            md_table(&t)
        );
    }
    if !run.classification.is_empty() {
        let t = classification_table(run);
        let caption = "Classification of clean inputs with the MC-averaged predictive.";
        html.push_str("<h2>Classification and calibration</h2>\n");
        html.push_str(&html_table(&t, caption));
        let _ = write!(
            md,
            "## Classification and calibration\n\n{caption}\n\n{}\n",
            md_table(&t)
        );
    }
    if !figs.is_empty() {
        html.push_str("<h2>Figures</h2>\n");
        html.push_str(&fig_html);
        let _ = write!(md, "## Figures\n\n{fig_md}");
    }
    let _ = write!(
        html,
        "<p class=\"meta\">Generated by {}. Tables: {}. See manifest.json for inputs and \
         checksums.</p>\n</body>\n</html>\n",
        html_escape(&opts.generator),
        html_escape(&tables_written.join(", "))
    );
    let _ = writeln!(md, "_Generated by {}._", opts.generator);
    write_file(&dir.join("index.html"), html)?;
    write_file(&dir.join("summary.md"), md)?;

    let mut inputs = Vec::new();
    for p in &run.inputs {
        let (bytes, sha256) = sha256_file(p)?;
        inputs.push(ManifestInput {
            file: p.display().to_string(),
            bytes,
            sha256,
        });
    }
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let manifest = serde_json::json!({
        "generator": opts.generator,
        "reports_version": env!("CARGO_PKG_VERSION"),
        "created_unix": created,
        "inputs": inputs,
        "options": {
            "title": opts.title,
            "subset": opts.subset,
            "bootstrap": opts.bootstrap,
            "seed": opts.bootstrap.map(|b| b.seed),
            "png": opts.png,
        },
        "tables": tables_written,
        "figures": fig_files,
        "detection_groups": run.detection.len(),
    });
    write_file(
        &dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;
    Ok(ReportSummary {
        out_dir: dir.to_path_buf(),
        n_detection_groups: run.detection.len(),
        tables: tables_written,
        figures: fig_files,
        rows_dropped_by_subset: run.n_dropped,
    })
}

/// A sibling path of `dest` with a unique hidden name (`.NAME.KIND-PID-NANOS`).
fn sibling(dest: &Path, kind: &str) -> PathBuf {
    let name = dest
        .file_name()
        .map_or("report".into(), |n| n.to_string_lossy().into_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    dest.with_file_name(format!(".{name}.{kind}-{}-{nanos}", std::process::id()))
}

/// Writes the report of `run` to `out_dir` atomically: everything goes to a temporary sibling
/// directory first, which is renamed into place once complete.
pub fn write_report(run: &RunData, out_dir: &Path, opts: &ReportOptions) -> Result<ReportSummary> {
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| ReportError::io(&parent, e))?;
    let tmp = sibling(out_dir, "tmp");
    std::fs::create_dir(&tmp).map_err(|e| ReportError::io(&tmp, e))?;
    let result = write_contents(run, &tmp, opts);
    let mut summary = match result {
        Ok(s) => s,
        Err(e) => {
            // Best effort: the error that matters is the one that stopped the report.
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let old = sibling(out_dir, "old");
    let had_old = out_dir.exists();
    if had_old {
        std::fs::rename(out_dir, &old).map_err(|e| ReportError::io(out_dir, e))?;
    }
    if let Err(e) = std::fs::rename(&tmp, out_dir) {
        if had_old {
            let _ = std::fs::rename(&old, out_dir);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(ReportError::io(out_dir, e));
    }
    if had_old {
        std::fs::remove_dir_all(&old).map_err(|e| ReportError::io(&old, e))?;
    }
    summary.out_dir = out_dir.to_path_buf();
    Ok(summary)
}

/// `libre report RUN_DIR`: reads the run's CSV tables and (re-)renders its report.
pub fn render_run(run_dir: &Path, out_dir: &Path, opts: &ReportOptions) -> Result<ReportSummary> {
    if let Some(b) = &opts.bootstrap {
        b.validate()?;
    }
    let run = load_run(run_dir, opts)?;
    write_report(&run, out_dir, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Xoshiro256pp;

    /// A run directory with every table: two models, two attacks, two radii for PGD.
    pub(crate) fn sample_run(dir: &Path) {
        let mut r = Xoshiro256pp::seed_from_u64(11);
        let mut s = String::from("model,attack,eps,label,score,clean_correct,adv_success\n");
        for model in ["dnn", "bnn"] {
            let gap = if model == "bnn" { 1.5 } else { 0.4 };
            for i in 0..300 {
                let _ = writeln!(
                    s,
                    "{model},clean,,0,{},{},",
                    r.next_f64(),
                    (i % 10 != 0) as u8
                );
            }
            for (attack, eps) in [("fgsm", "0.0627"), ("pgd", "0.0157"), ("pgd", "0.0627")] {
                let e: f64 = eps.parse().unwrap();
                for i in 0..200 {
                    let sc = r.next_f64() + gap * e * 16.0;
                    let _ = writeln!(s, "{model},{attack},{eps},1,{sc},1,{}", (i % 4 != 0) as u8);
                }
            }
        }
        std::fs::write(dir.join(SCORES_CSV), s).unwrap();
        std::fs::write(
            dir.join(CLASSIFICATION_CSV),
            "model,n,top1,top5,nll,brier,ece\ndnn,1000,0.9692,0.998,0.13,0.05,0.031\n\
             bnn,1000,0.9709,0.999,0.11,0.045,0.012\n",
        )
        .unwrap();
        let mut rel = String::from("model,bin,lo,hi,count,confidence,accuracy\n");
        for model in ["dnn", "bnn"] {
            for b in 0..15 {
                let (lo, hi) = (b as f64 / 15.0, (b + 1) as f64 / 15.0);
                let conf = 0.5 * (lo + hi);
                let acc = if model == "dnn" {
                    conf * 0.85
                } else {
                    conf * 0.98
                };
                let count = if b < 5 { 0 } else { 10 * b };
                let _ = writeln!(rel, "{model},{b},{lo},{hi},{count},{conf},{acc}");
            }
        }
        std::fs::write(dir.join(RELIABILITY_CSV), rel).unwrap();
        let mut mc = String::from("model,n_samples,top1,nll\ndnn,1,0.9692,0.13\n");
        for s in [1, 2, 5, 10, 20] {
            let _ = writeln!(
                mc,
                "bnn,{s},{},{}",
                0.96 + 0.0005 * s as f64,
                0.14 - 0.001 * s as f64
            );
        }
        std::fs::write(dir.join(MC_CURVE_CSV), mc).unwrap();
    }

    #[test]
    fn full_report_is_written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        sample_run(dir.path());
        let out = dir.path().join("report");
        let opts = ReportOptions {
            bootstrap: Some(BootstrapConfig {
                n_resamples: 50,
                seed: 1,
                level: 0.9,
            }),
            png: true,
            ..Default::default()
        };
        let s = render_run(dir.path(), &out, &opts).unwrap();
        assert_eq!(s.n_detection_groups, 6);
        for f in [
            "index.html",
            "summary.md",
            "manifest.json",
            DETECTION_CSV,
            MC_CURVE_CSV,
        ] {
            assert!(out.join(f).is_file(), "{f} missing");
        }
        for f in [
            "roc",
            "score_hist",
            "auroc_vs_eps",
            "reliability",
            "mc_curve",
        ] {
            assert!(
                out.join(format!("figures/{f}.svg")).is_file(),
                "{f}.svg missing"
            );
            assert!(
                out.join(format!("figures/{f}.png")).is_file(),
                "{f}.png missing"
            );
        }
        let html = std::fs::read_to_string(out.join("index.html")).unwrap();
        assert_eq!(html.matches("<svg").count(), 5, "figures are inlined");
        assert!(html.contains("subset `all`") && html.contains("AUROC 90% CI"));
        let rows: Vec<DetectionRow> = tables::read_rows(&out.join(DETECTION_CSV)).unwrap();
        assert_eq!(rows.len(), 6);
        // Shared clean rows: each group has its 200 adversarial and the model's 300 clean.
        assert!(rows.iter().all(|r| r.n_pos == 200 && r.n_neg == 300));
        // BNN separates better by construction.
        let auroc = |m: &str, a: &str, e: &str| {
            rows.iter()
                .find(|r| r.model == m && r.attack == a && r.eps == e)
                .unwrap()
                .auroc
        };
        assert!(auroc("bnn", "pgd", "0.0627") > auroc("dnn", "pgd", "0.0627"));
        assert!(rows
            .iter()
            .all(|r| r.auroc_lo.unwrap() <= r.auroc && r.auroc <= r.auroc_hi.unwrap()));
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(manifest["options"]["seed"], 1);
        assert_eq!(manifest["inputs"].as_array().unwrap().len(), 4);
        assert_eq!(manifest["inputs"][0]["sha256"].as_str().unwrap().len(), 64);

        // Re-render with the successful subset over the old report: replaced, no leftovers.
        let opts = ReportOptions {
            subset: Subset::Successful,
            ..Default::default()
        };
        let s = render_run(dir.path(), &out, &opts).unwrap();
        assert!(s.rows_dropped_by_subset > 0);
        let rows: Vec<DetectionRow> = tables::read_rows(&out.join(DETECTION_CSV)).unwrap();
        assert!(rows
            .iter()
            .all(|r| r.subset == Subset::Successful && r.n_pos == 150));
        assert!(rows.iter().all(|r| r.n_neg == 270 && r.auroc_lo.is_none()));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn failed_report_leaves_previous_one_untouched() {
        let dir = tempfile::tempdir().unwrap();
        sample_run(dir.path());
        let out = dir.path().join("report");
        render_run(dir.path(), &out, &ReportOptions::default()).unwrap();
        let before = std::fs::read_to_string(out.join("index.html")).unwrap();
        // Break the scores: a NaN on line 3.
        let p = dir.path().join(SCORES_CSV);
        let text = std::fs::read_to_string(&p).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines[2] = "dnn,clean,,0,NaN,1,";
        std::fs::write(&p, lines.join("\n")).unwrap();
        let e = render_run(dir.path(), &out, &ReportOptions::default()).unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        assert_eq!(
            std::fs::read_to_string(out.join("index.html")).unwrap(),
            before
        );
    }

    #[test]
    fn group_without_clean_rows_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(SCORES_CSV),
            "model,attack,eps,label,score\nbnn,pgd,0.03,1,0.5\nbnn,pgd,0.03,1,0.7\n",
        )
        .unwrap();
        let e = render_run(dir.path(), &dir.path().join("r"), &ReportOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model=bnn attack=pgd eps=0.03") && e.contains("no clean"),
            "{e}"
        );
        let e = render_run(
            &dir.path().join("nope"),
            &dir.path().join("r"),
            &Default::default(),
        );
        assert!(e.is_err());
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(html_escape("<a & 'b'>"), "&lt;a &amp; &#39;b&#39;&gt;");
    }
}
