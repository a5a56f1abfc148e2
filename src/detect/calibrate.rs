//! Threshold calibration at a target false-positive rate (docs/detection.md, "Calibration").
//!
//! On n held-out clean scores, the threshold t is the smallest value such that at most
//! floor(fpr * n) clean scores reach it (flagged = score >= t), so the achieved FPR never exceeds
//! the target on the calibration set; the rule lives in the reports crate
//! ([`libre_reports::detection::threshold_for_fpr`]), shared with the robust table. The achieved rate is reported with a 95% Wilson interval,
//! and [`binomial_interval`] gives the range of flag counts a fresh clean set of size m should show
//! at the target rate (exact binomial quantiles), which is how the calibration is tested.
//!
//! The binomial tail is a dozen lines of log-space arithmetic; pulling a statistics crate (and its
//! linear-algebra dependencies) into the build for it would cost more than it saves.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// The outcome of a calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub threshold: f64,
    pub target_fpr: f64,
    /// Fraction of the calibration scores at or above the threshold.
    pub achieved_fpr: f64,
    /// 95% Wilson interval of the achieved rate.
    pub achieved_fpr_ci95: (f64, f64),
    pub n: usize,
}

/// Calibrates a threshold on clean scores for a target false-positive rate in (0, 1), by the
/// one threshold rule of libre ([`libre_reports::detection::threshold_for_fpr`]).
pub fn calibrate(clean: &[f64], target_fpr: f64) -> Result<Calibration> {
    if !(target_fpr > 0.0 && target_fpr < 1.0) {
        return Err(Error::param(
            "fpr",
            target_fpr,
            "the target false-positive rate must lie in (0, 1)",
        ));
    }
    if clean.is_empty() {
        return Err(Error::invalid("calibration needs at least one clean image"));
    }
    if let Some(i) = clean.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(format!(
            "calibration score {i} is {}: the model produced a non-finite score",
            clean[i]
        )));
    }
    let n = clean.len();
    let t = libre_reports::detection::threshold_for_fpr(clean, target_fpr)?;
    let flagged = clean.iter().filter(|&&s| s >= t).count();
    let achieved = flagged as f64 / n as f64;
    Ok(Calibration {
        threshold: t,
        target_fpr,
        achieved_fpr: achieved,
        achieved_fpr_ci95: wilson(flagged, n),
        n,
    })
}

/// 95% Wilson score interval of a proportion k / n.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    let z = 1.959_963_984_540_054f64;
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let den = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / den;
    let half = z * ((p * (1.0 - p) / n) + z * z / (4.0 * n * n)).sqrt() / den;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

fn ln_choose(n: usize, k: usize) -> f64 {
    // Sum of logs: exact enough for the n (<= millions) calibration sets see.
    let k = k.min(n - k);
    (0..k)
        .map(|i| ((n - i) as f64).ln() - ((i + 1) as f64).ln())
        .sum()
}

/// The central 95% range `[lo, hi]` of flag counts among m clean images when each is flagged
/// with probability p: the 2.5% and 97.5% quantiles of Binomial(m, p).
pub fn binomial_interval(m: usize, p: f64) -> (usize, usize) {
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    let mut cdf = 0.0;
    let mut lo = None;
    for k in 0..=m {
        cdf += (ln_choose(m, k) + k as f64 * lp + (m - k) as f64 * lq).exp();
        if lo.is_none() && cdf >= 0.025 {
            lo = Some(k);
        }
        if cdf >= 0.975 {
            return (lo.unwrap_or(k), k);
        }
    }
    (lo.unwrap_or(m), m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_flags_at_most_the_target_share() {
        let clean: Vec<f64> = (0..100).map(|i| i as f64).collect();
        let c = calibrate(&clean, 0.05).unwrap();
        assert_eq!(c.threshold, 95.0);
        assert!((c.achieved_fpr - 0.05).abs() < 1e-12);
        // 0.5% of 100: nothing may be flagged.
        let c = calibrate(&clean, 0.005).unwrap();
        assert!(c.threshold > 99.0 && c.achieved_fpr == 0.0);
    }

    #[test]
    fn ties_never_push_the_rate_over_the_target() {
        let mut clean = vec![1.0; 90];
        clean.extend(vec![5.0; 10]);
        let c = calibrate(&clean, 0.05).unwrap();
        assert_eq!(
            c.achieved_fpr, 0.0,
            "the 10 tied top scores cannot be split"
        );
        let c = calibrate(&clean, 0.10).unwrap();
        assert_eq!((c.threshold, c.achieved_fpr), (5.0, 0.10));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(calibrate(&[1.0], 0.0).is_err());
        assert!(calibrate(&[1.0], 1.0).is_err());
        assert!(calibrate(&[], 0.1).is_err());
        assert!(calibrate(&[1.0, f64::NAN], 0.1).is_err());
    }

    #[test]
    fn binomial_interval_matches_known_quantiles() {
        // scipy.stats.binom(1000, 0.05).ppf([0.025, 0.975]) = [37, 64].
        assert_eq!(binomial_interval(1000, 0.05), (37, 64));
        // binom(100, 0.1).ppf([0.025, 0.975]) = [5, 16].
        assert_eq!(binomial_interval(100, 0.1), (5, 16));
    }

    #[test]
    fn wilson_interval_contains_the_estimate() {
        let (lo, hi) = wilson(50, 1000);
        assert!(lo < 0.05 && 0.05 < hi);
        // statsmodels proportion_confint(50, 1000, method='wilson') = (0.03813, 0.06531).
        assert!(
            (lo - 0.03813).abs() < 1e-4 && (hi - 0.06531).abs() < 1e-4,
            "{lo} {hi}"
        );
    }
}
