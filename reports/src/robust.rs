//! Robust detection: how the field scores a detector against an attacker (Carlini & Wagner 2017,
//! "Adversarial examples are not easily detected"; Tramer et al. 2020; docs/detection.md,
//! "Adaptive evaluation").
//!
//! An attacked image counts against the defence when its adversarial input is **misclassified
//! and not flagged**: its score is below a threshold fixed once from clean data (the detector's
//! calibrated threshold, or one threshold per detector at a target FPR of its clean rows), the
//! same threshold for every attack and eps. Per detector x attack x eps:
//! - attack success %: adversarial inputs misclassified;
//! - flagged %: adversarial inputs at or above the threshold;
//! - **evaded %**: misclassified and not flagged;
//! - **robust detection accuracy** = 100 - evaded %, over *all* attacked images (an image the
//!   classifier already gets wrong and the detector does not flag is a failure too).
//!
//! The **worst case** per detector and eps takes, per image, the union over the attacks at that
//! eps and the clean image itself (the unperturbed image lies in every eps-ball): an image is
//! evaded when any of them evaded, as AutoAttack aggregates robust accuracy. Intervals are
//! percentile bootstraps over images (the images are the sampling unit; [`crate::bootstrap`]).
use crate::bootstrap::{percentile_interval, BootstrapConfig};
use crate::detection::DetectionMetrics;
use crate::error::{ReportError, Result};
use crate::rng::Xoshiro256pp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The attack column of a worst-case row.
pub const WORST_CASE: &str = "worst-case";
/// The attack column of clean rows.
pub const CLEAN: &str = "clean";

/// One scored input.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredInput {
    /// Which test image this input is (or was crafted from).
    pub image: String,
    /// The detector, e.g. `libre/feature-variance`.
    pub detector: String,
    /// `clean` for the unperturbed image.
    pub attack: String,
    pub eps: String,
    pub score: f64,
    /// The classifier's prediction on this input is correct.
    pub correct: bool,
}

/// Where a detector's threshold came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    pub detector: String,
    pub threshold: f64,
    /// `calibrated` (the detector file's), or `clean-fpr-0.05`-style: computed here from the
    /// detector's clean rows.
    pub source: String,
}

/// One row of the robust-detection table (percentages in [0, 100]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RobustRow {
    pub detector: String,
    /// The attack, [`CLEAN`], or [`WORST_CASE`].
    pub attack: String,
    pub eps: String,
    /// Images.
    pub n: usize,
    pub threshold: f64,
    pub threshold_source: String,
    /// Misclassified (on the worst-case row: by at least one input).
    pub attack_success: f64,
    /// Flagged (on the worst-case row: empty, there is no single input to flag).
    pub flagged: Option<f64>,
    pub evaded: f64,
    pub robust_detection_accuracy: f64,
    /// Bootstrap interval of `evaded` (None without a bootstrap).
    pub evaded_lo: Option<f64>,
    pub evaded_hi: Option<f64>,
}

/// Per-image outcome of one group: (misclassified, flagged).
type Outcome = (bool, bool);

fn pct(k: usize, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        100.0 * k as f64 / n as f64
    }
}

/// Bootstrap interval (in %) of the mean of per-image booleans.
fn interval(values: &[bool], boot: &BootstrapConfig, stream: u64) -> Result<(f64, f64)> {
    let n = values.len();
    if n == 0 {
        return Ok((0.0, 0.0));
    }
    let reps: Vec<f64> = (0..boot.n_resamples)
        .map(|r| {
            let mut rng = Xoshiro256pp::for_stream(boot.seed ^ stream, r as u64);
            let k = (0..n).filter(|_| values[rng.below(n)]).count();
            pct(k, n)
        })
        .collect();
    let i = percentile_interval(&reps, boot.level)?;
    Ok((i.lo, i.hi))
}

fn stable_hash(parts: &[&str]) -> u64 {
    parts.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, p| {
        p.bytes()
            .chain(std::iter::once(0u8))
            .fold(h, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
    })
}

/// The columns [`read_scored_inputs`] reads, and what a missing one's error adds (callers name
/// their own flags or keys there).
#[derive(Debug, Clone, Copy)]
pub struct InputColumns<'a> {
    pub detector: &'a str,
    pub score: &'a str,
    /// Added to a missing `image` / `attack` column.
    pub need_hint: &'a str,
    pub correct_hint: &'a str,
    pub score_hint: &'a str,
    pub detector_hint: &'a str,
}

fn bad_cell(path: &Path, line: u64, column: &str, problem: String) -> ReportError {
    ReportError::BadCell {
        path: path.into(),
        line,
        column: column.into(),
        problem,
    }
}

/// One [`ScoredInput`] per row of a scores CSV with the columns `image`, `attack` (`clean` rows
/// are the unperturbed images), `correct` (0/1: the classifier is right on that row's input), an
/// optional `eps` (without it every attack row shares one empty eps), and the detector and score
/// columns of `cols`. Errors name the file, line and column.
pub fn read_scored_inputs(path: &Path, cols: &InputColumns) -> Result<Vec<ScoredInput>> {
    let csv_err = |source| ReportError::Csv {
        path: path.into(),
        source,
    };
    let mut rdr = crate::tables::csv_reader(crate::tables::open_file(path)?);
    let headers = rdr.headers().map_err(csv_err)?.clone();
    if headers.is_empty() || headers.iter().all(|h| h.is_empty()) {
        return Err(ReportError::Empty {
            what: format!("{} is empty (no header row)", path.display()),
        });
    }
    let column = |name: &str, hint: &str| crate::tables::column_index(path, &headers, name, hint);
    let ci = column("image", cols.need_hint)?;
    let ca = column("attack", cols.need_hint)?;
    let cc = column("correct", cols.correct_hint)?;
    let cs = column(cols.score, cols.score_hint)?;
    let cd = column(cols.detector, cols.detector_hint)?;
    let ce = headers.iter().position(|h| h == "eps");
    let mut rows = Vec::new();
    let mut rec = csv::StringRecord::new();
    while rdr.read_record(&mut rec).map_err(csv_err)? {
        let line = rec.position().map_or(0, |p| p.line());
        let score: f64 = rec[cs].parse().map_err(|_| {
            bad_cell(
                path,
                line,
                cols.score,
                format!("`{}` is not a number", &rec[cs]),
            )
        })?;
        if !score.is_finite() {
            return Err(bad_cell(
                path,
                line,
                cols.score,
                format!("value is {score}; scores must be finite"),
            ));
        }
        let correct = match &rec[cc] {
            "1" | "1.0" | "true" | "True" | "TRUE" => true,
            "0" | "0.0" | "false" | "False" | "FALSE" => false,
            other => {
                return Err(bad_cell(
                    path,
                    line,
                    "correct",
                    format!("`{other}` is not 0 or 1 (1: the classifier is right on this input)"),
                ))
            }
        };
        if rec[ci].is_empty() {
            return Err(bad_cell(path, line, "image", "empty image id".into()));
        }
        rows.push(ScoredInput {
            image: rec[ci].to_string(),
            detector: rec[cd].to_string(),
            attack: rec[ca].to_string(),
            eps: ce.map(|e| rec[e].to_string()).unwrap_or_default(),
            score,
            correct,
        });
    }
    if rows.is_empty() {
        return Err(ReportError::Empty {
            what: format!("{} has a header but no data rows", path.display()),
        });
    }
    Ok(rows)
}

/// Thresholds for every detector of `rows`: the given one where `given` has it, else
/// [`crate::detection::threshold_for_fpr`] of the detector's clean rows at `fpr`.
pub fn thresholds(
    rows: &[ScoredInput],
    given: &HashMap<String, f64>,
    fpr: f64,
) -> Result<Vec<Threshold>> {
    let mut clean: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for r in rows {
        if !order.contains(&r.detector.as_str()) {
            order.push(&r.detector);
        }
        if r.attack == CLEAN {
            clean.entry(&r.detector).or_default().push(r.score);
        }
    }
    order
        .into_iter()
        .map(|d| {
            if let Some(&t) = given.get(d) {
                return Ok(Threshold {
                    detector: d.into(),
                    threshold: t,
                    source: "calibrated".into(),
                });
            }
            let scores = clean.get(d).ok_or_else(|| ReportError::InvalidArgument {
                name: "threshold",
                value: d.into(),
                constraint: "a detector without a calibrated threshold needs clean rows \
                             (attack `clean`) to fix one at the target FPR",
            })?;
            Ok(Threshold {
                detector: d.into(),
                threshold: crate::detection::threshold_for_fpr(scores, fpr)?,
                source: format!("clean-fpr-{fpr}"),
            })
        })
        .collect()
}

/// The robust-detection table: per detector (in order of appearance) its clean row, each attack
/// x eps, then per eps the worst case over that eps's attacks and the clean image.
pub fn robust_rows(
    rows: &[ScoredInput],
    thresholds: &[Threshold],
    boot: Option<&BootstrapConfig>,
) -> Result<Vec<RobustRow>> {
    if let Some(b) = boot {
        b.validate()?;
    }
    // detector -> (attack, eps) in order -> image -> outcome
    type Groups<'a> = Vec<((&'a str, &'a str), BTreeMap<&'a str, Outcome>)>;
    let mut by_det: Vec<(&str, Groups)> = Vec::new();
    for r in rows {
        if !r.score.is_finite() {
            return Err(ReportError::InvalidArgument {
                name: "score",
                value: r.score.to_string(),
                constraint: "scores must be finite",
            });
        }
        let th = thresholds
            .iter()
            .find(|t| t.detector == r.detector)
            .ok_or_else(|| ReportError::InvalidArgument {
                name: "threshold",
                value: r.detector.clone(),
                constraint: "every detector needs a threshold",
            })?;
        let d = match by_det.iter().position(|(d, _)| *d == r.detector) {
            Some(i) => i,
            None => {
                by_det.push((&r.detector, Vec::new()));
                by_det.len() - 1
            }
        };
        let eps = if r.attack == CLEAN {
            ""
        } else {
            r.eps.as_str()
        };
        let groups = &mut by_det[d].1;
        let g = match groups
            .iter()
            .position(|(k, _)| *k == (r.attack.as_str(), eps))
        {
            Some(i) => i,
            None => {
                groups.push(((&r.attack, eps), BTreeMap::new()));
                groups.len() - 1
            }
        };
        let outcome = (!r.correct, r.score >= th.threshold);
        if groups[g].1.insert(&r.image, outcome).is_some() {
            return Err(ReportError::InvalidArgument {
                name: "image",
                value: r.image.clone(),
                constraint: "an image appears twice in one detector x attack x eps group",
            });
        }
    }
    let mut out = Vec::new();
    for (det, groups) in &by_det {
        let th = thresholds
            .iter()
            .find(|t| t.detector == *det)
            .expect("checked above");
        let row =
            |attack: &str, eps: &str, outcomes: &[Outcome], flag_col: bool| -> Result<RobustRow> {
                let n = outcomes.len();
                let evaded: Vec<bool> = outcomes.iter().map(|&(w, f)| w && !f).collect();
                let k_ev = evaded.iter().filter(|&&e| e).count();
                let (lo, hi) = match boot {
                    Some(b) => {
                        let (lo, hi) = interval(&evaded, b, stable_hash(&[det, attack, eps]))?;
                        (Some(lo), Some(hi))
                    }
                    None => (None, None),
                };
                Ok(RobustRow {
                    detector: det.to_string(),
                    attack: attack.into(),
                    eps: eps.into(),
                    n,
                    threshold: th.threshold,
                    threshold_source: th.source.clone(),
                    attack_success: pct(outcomes.iter().filter(|o| o.0).count(), n),
                    flagged: flag_col.then(|| pct(outcomes.iter().filter(|o| o.1).count(), n)),
                    evaded: pct(k_ev, n),
                    robust_detection_accuracy: 100.0 - pct(k_ev, n),
                    evaded_lo: lo,
                    evaded_hi: hi,
                })
            };
        for ((attack, eps), m) in groups {
            let v: Vec<Outcome> = m.values().copied().collect();
            out.push(row(attack, eps, &v, true)?);
        }
        // Worst case per eps, over the attacks at that eps and the clean image.
        let clean = groups
            .iter()
            .find(|((a, _), _)| *a == CLEAN)
            .map(|(_, m)| m);
        let mut eps_list: Vec<&str> = Vec::new();
        for ((a, e), _) in groups {
            if *a != CLEAN && !eps_list.contains(e) {
                eps_list.push(e);
            }
        }
        for eps in eps_list {
            // image -> (any misclassified, any evaded)
            let mut worst: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
            let members = groups
                .iter()
                .filter(|((a, e), _)| *a != CLEAN && *e == eps)
                .map(|(_, m)| m)
                .chain(clean);
            for m in members {
                for (img, &(wrong, flagged)) in m {
                    let w = worst.entry(img).or_insert((false, false));
                    w.0 |= wrong;
                    w.1 |= wrong && !flagged;
                }
            }
            // Encoded as (misclassified, flagged) with flagged = !evaded among misclassified.
            let v: Vec<Outcome> = worst.values().map(|&(w, e)| (w, w && !e)).collect();
            out.push(row(WORST_CASE, eps, &v, false)?);
        }
    }
    Ok(out)
}

/// The AUROC of one detector x attack x eps against that detector's clean rows.
#[derive(Debug, Clone, PartialEq)]
pub struct AttackAuroc {
    /// The detector, as in [`ScoredInput::detector`].
    pub detector: String,
    /// The attack (never [`CLEAN`]).
    pub attack: String,
    /// The attack's eps, as written in the rows.
    pub eps: String,
    /// The attacked rows (positive) against the detector's clean rows (negative).
    pub auroc: f64,
}

/// AUROC of each detector x attack x eps against that detector's clean rows (beside the robust
/// numbers, as the report shows it), in order of first appearance; absent for detectors without
/// clean rows.
pub fn aurocs_against_clean(rows: &[ScoredInput]) -> Result<Vec<AttackAuroc>> {
    let mut clean: Vec<(&str, Vec<f64>)> = Vec::new();
    let mut attacked: Vec<((&str, &str, &str), Vec<f64>)> = Vec::new();
    for r in rows {
        if r.attack == CLEAN {
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
        out.push(AttackAuroc {
            detector: d.to_string(),
            attack: a.to_string(),
            eps: e.to_string(),
            auroc: m.auroc,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(image: usize, attack: &str, eps: &str, score: f64, correct: bool) -> ScoredInput {
        ScoredInput {
            image: image.to_string(),
            detector: "m/s".into(),
            attack: attack.into(),
            eps: eps.into(),
            score,
            correct,
        }
    }

    /// Each attack x eps against the detector's clean rows, in order of first appearance.
    #[test]
    fn aurocs_are_per_attack_against_clean_rows() {
        let rows = vec![
            input(0, CLEAN, "", 0.1, true),
            input(1, CLEAN, "", 0.2, true),
            input(0, "pgd", "0.3", 0.9, false),
            input(1, "pgd", "0.3", 0.15, false),
            input(0, "fgsm", "0.3", 0.8, false),
        ];
        let a = aurocs_against_clean(&rows).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].attack.as_str(), a[0].auroc), ("pgd", 0.75));
        assert_eq!((a[1].attack.as_str(), a[1].auroc), ("fgsm", 1.0));
    }

    fn th(t: f64) -> Vec<Threshold> {
        vec![Threshold {
            detector: "m/s".into(),
            threshold: t,
            source: "calibrated".into(),
        }]
    }

    #[test]
    fn evaded_and_robust_accuracy_equal_a_direct_count() {
        // Threshold 1.0: flagged = score >= 1.
        let rows = vec![
            input(0, "clean", "", 0.2, true),
            input(1, "clean", "", 0.5, false), // clean-misclassified, not flagged: a failure
            input(2, "clean", "", 1.5, true),
            input(3, "clean", "", 0.1, true),
            input(0, "pgd", "0.3", 0.9, false), // evaded
            input(1, "pgd", "0.3", 1.2, false), // flagged
            input(2, "pgd", "0.3", 0.3, true),  // still correct
            input(3, "pgd", "0.3", 1.0, false), // score == threshold: flagged
            input(0, "sel", "0.3", 2.0, false), // flagged
            input(1, "sel", "0.3", 2.0, false), // flagged
            input(2, "sel", "0.3", 0.1, false), // evaded
            input(3, "sel", "0.3", 0.5, true),
        ];
        let out = robust_rows(&rows, &th(1.0), None).unwrap();
        let get = |a: &str| out.iter().find(|r| r.attack == a).unwrap();
        let clean = get("clean");
        assert_eq!(
            (clean.n, clean.evaded, clean.flagged),
            (4, 25.0, Some(25.0))
        );
        let pgd = get("pgd");
        assert_eq!(pgd.attack_success, 75.0);
        assert_eq!(pgd.flagged, Some(50.0));
        assert_eq!(pgd.evaded, 25.0);
        assert_eq!(pgd.robust_detection_accuracy, 75.0);
        // Worst case: image 0 (pgd), 1 (clean), 2 (sel) evaded; image 3 never.
        let w = get(WORST_CASE);
        assert_eq!((w.n, w.evaded, w.eps.as_str()), (4, 75.0, "0.3"));
        assert_eq!(w.attack_success, 100.0);
        assert_eq!(w.flagged, None);
        // The same threshold for every attack: both attack rows report it.
        assert!(out.iter().all(|r| r.threshold == 1.0));
    }

    #[test]
    fn worst_case_is_the_per_image_any() {
        // Random outcomes: the worst case equals a direct per-image any over attacks + clean.
        let mut rng = Xoshiro256pp::seed_from_u64(9);
        let mut rows = Vec::new();
        let attacks = ["clean", "a", "b", "c"];
        for img in 0..50 {
            for a in attacks {
                let eps = if a == "clean" { "" } else { "0.1" };
                rows.push(input(img, a, eps, rng.next_f64(), rng.next_f64() < 0.5));
            }
        }
        let out = robust_rows(&rows, &th(0.4), None).unwrap();
        let want = (0..50)
            .filter(|&img| {
                rows.iter()
                    .any(|r| r.image == img.to_string() && !r.correct && r.score < 0.4)
            })
            .count();
        let w = out.iter().find(|r| r.attack == WORST_CASE).unwrap();
        assert_eq!(w.evaded, 100.0 * want as f64 / 50.0);
        // Never below any single attack.
        for r in &out {
            assert!(r.evaded <= w.evaded);
        }
    }

    #[test]
    fn thresholds_come_from_calibration_or_the_clean_rows() {
        let mut rows: Vec<ScoredInput> = (0..100)
            .map(|i| input(i, "clean", "", i as f64, true))
            .collect();
        rows.push(input(0, "pgd", "0.3", 50.0, false));
        let t = thresholds(&rows, &HashMap::new(), 0.05).unwrap();
        // At most 5 of 100 clean scores reach it: 95..99 flagged.
        assert_eq!(t[0].threshold, 95.0);
        assert_eq!(t[0].source, "clean-fpr-0.05");
        let given = HashMap::from([("m/s".to_string(), 7.0)]);
        let t = thresholds(&rows, &given, 0.05).unwrap();
        assert_eq!((t[0].threshold, t[0].source.as_str()), (7.0, "calibrated"));
    }

    #[test]
    fn bootstrap_interval_brackets_the_estimate_and_is_reproducible() {
        let rows: Vec<ScoredInput> = (0..200)
            .map(|i| input(i, "pgd", "0.3", 0.0, i % 3 == 0))
            .collect();
        let b = BootstrapConfig {
            n_resamples: 200,
            seed: 1,
            level: 0.95,
        };
        let out = robust_rows(&rows, &th(1.0), Some(&b)).unwrap();
        let r = &out[0];
        let (lo, hi) = (r.evaded_lo.unwrap(), r.evaded_hi.unwrap());
        assert!(
            lo < r.evaded && r.evaded < hi && hi - lo < 20.0,
            "{lo} {} {hi}",
            r.evaded
        );
        assert_eq!(out, robust_rows(&rows, &th(1.0), Some(&b)).unwrap());
    }

    #[test]
    fn duplicate_images_and_missing_thresholds_are_refused() {
        let rows = vec![
            input(0, "pgd", "0.3", 0.0, true),
            input(0, "pgd", "0.3", 0.0, true),
        ];
        assert!(robust_rows(&rows, &th(1.0), None).is_err());
        let rows = vec![input(0, "pgd", "0.3", 0.0, true)];
        assert!(robust_rows(&rows, &[], None).is_err());
        assert!(thresholds(&rows, &HashMap::new(), 0.05).is_err());
    }
}
