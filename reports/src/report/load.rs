//! Reading a run directory: the optional input tables, and the detection groups computed from
//! `scores.csv` (metrics and, on request, bootstrap intervals per (model, attack, eps)).
use super::{ReportOptions, CLASSIFICATION_CSV, MC_CURVE_CSV, RELIABILITY_CSV, SCORES_CSV};
use crate::bootstrap::{bootstrap_detection, BootstrapConfig, DetectionCi};
use crate::detection::DetectionMetrics;
use crate::error::{ReportError, Result};
use crate::tables::{self, ClassificationRow, McCurveRow, ReliabilityRow, ScoreCsvSpec, Subset};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Attack names that mark clean rows shared by every attack of a model.
const SHARED_CLEAN: [&str; 2] = ["", "clean"];

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

pub(super) fn first_seen_index(list: &mut Vec<String>, s: &str) -> usize {
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
