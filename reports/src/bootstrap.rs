//! Percentile bootstrap confidence intervals for the detection metrics (the percentile interval
//! of Efron and Tibshirani, "An Introduction to the Bootstrap", 1993).
//!
//! The resampling is *stratified*: each resample draws `n_pos` adversarial and `n_neg` clean
//! samples with replacement from their own class, so every resample has both classes (an
//! unstratified resample of a small or unbalanced set can lose a class, leaving AUROC undefined)
//! and the class ratio, which AUPR depends on, stays that of the data.
//!
//! Reproducibility: resample `r` draws from `Xoshiro256pp::for_stream(seed, r)` and the results
//! are collected in resample order, so the intervals are bit-identical whatever the number of
//! rayon threads. Each resample is a vector of multiplicities over the once-sorted scores, swept
//! in O(n) without re-sorting.
use crate::detection::{DetectionMetrics, Presorted};
use crate::error::{ReportError, Result};
use crate::rng::Xoshiro256pp;
use rayon::prelude::*;
use serde::Serialize;

/// Bootstrap settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BootstrapConfig {
    /// Number of resamples (>= 2; 1000 is the usual choice).
    pub n_resamples: usize,
    /// Seed of the whole run; resample `r` uses the stream `(seed, r)`.
    pub seed: u64,
    /// Two-sided coverage of the interval, in (0, 1); 0.95 by default.
    pub level: f64,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig {
            n_resamples: 1000,
            seed: 0,
            level: 0.95,
        }
    }
}

/// The largest accepted resample count.
pub const MAX_RESAMPLES: usize = 100_000;

impl BootstrapConfig {
    /// Rejects settings no interval can be computed from.
    pub fn validate(&self) -> Result<()> {
        if self.n_resamples < 2 {
            return Err(ReportError::InvalidArgument {
                name: "n_resamples (--bootstrap)",
                value: self.n_resamples.to_string(),
                constraint: "need at least 2 resamples for an interval",
            });
        }
        // Each resample keeps its metrics in memory (and costs a full metric computation); past
        // this the percentile interval's Monte Carlo error is far below any reported digit.
        if self.n_resamples > MAX_RESAMPLES {
            return Err(ReportError::InvalidArgument {
                name: "n_resamples (--bootstrap)",
                value: self.n_resamples.to_string(),
                constraint: "at most 100000 resamples (10000 already fix a 95% interval to well \
                             under 0.01)",
            });
        }
        if !(self.level > 0.0 && self.level < 1.0) {
            return Err(ReportError::InvalidArgument {
                name: "level",
                value: self.level.to_string(),
                constraint: "must lie strictly between 0 and 1",
            });
        }
        Ok(())
    }
}

/// A two-sided percentile interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
}

/// Intervals for each metric of [`DetectionMetrics`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectionCi {
    pub level: f64,
    pub n_resamples: usize,
    pub seed: u64,
    pub auroc: Interval,
    pub aupr_in: Interval,
    pub aupr_out: Interval,
    pub tpr_at_fpr: TprAtFprCi,
    pub tnr_at_tpr95: Interval,
    pub detection_accuracy: Interval,
    pub detection_accuracy_at_fpr05: Interval,
}

/// Intervals of [`crate::detection::TprAtFpr`], keyed like it in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TprAtFprCi {
    #[serde(rename = "0.01")]
    pub fpr_0_01: Interval,
    #[serde(rename = "0.05")]
    pub fpr_0_05: Interval,
    #[serde(rename = "0.10")]
    pub fpr_0_10: Interval,
}

/// The `q` quantile of sorted values with linear interpolation (numpy's default method).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// The percentile interval of bootstrap replicates at coverage `level`.
pub fn percentile_interval(values: &[f64], level: f64) -> Result<Interval> {
    if values.is_empty() {
        return Err(ReportError::Empty {
            what: "no bootstrap replicates".into(),
        });
    }
    let mut v = values.to_vec();
    v.sort_unstable_by(f64::total_cmp);
    let a = (1.0 - level) / 2.0;
    Ok(Interval {
        lo: quantile_sorted(&v, a),
        hi: quantile_sorted(&v, 1.0 - a),
    })
}

/// Metrics of every resample, in resample order (exposed for tests and custom summaries).
pub fn detection_replicates(
    scores: &[f64],
    labels: &[bool],
    cfg: &BootstrapConfig,
) -> Result<Vec<DetectionMetrics>> {
    cfg.validate()?;
    let pre = Presorted::new(scores, labels)?;
    let n = pre.scores.len();
    Ok((0..cfg.n_resamples)
        .into_par_iter()
        .map_init(
            || vec![0u32; n],
            |counts, r| {
                counts.fill(0);
                let mut rng = Xoshiro256pp::for_stream(cfg.seed, r as u64);
                for at in [&pre.pos_at, &pre.neg_at] {
                    for _ in 0..at.len() {
                        counts[at[rng.below(at.len())] as usize] += 1;
                    }
                }
                pre.sweep_weighted(counts, pre.pos_at.len() as u64, pre.neg_at.len() as u64)
            },
        )
        .collect())
}

/// Percentile bootstrap intervals of every detection metric (stratified, seeded, parallel).
pub fn bootstrap_detection(
    scores: &[f64],
    labels: &[bool],
    cfg: &BootstrapConfig,
) -> Result<DetectionCi> {
    let reps = detection_replicates(scores, labels, cfg)?;
    let ci = |f: &dyn Fn(&DetectionMetrics) -> f64| -> Result<Interval> {
        let v: Vec<f64> = reps.iter().map(f).collect();
        percentile_interval(&v, cfg.level)
    };
    Ok(DetectionCi {
        level: cfg.level,
        n_resamples: cfg.n_resamples,
        seed: cfg.seed,
        auroc: ci(&|m| m.auroc)?,
        aupr_in: ci(&|m| m.aupr_in)?,
        aupr_out: ci(&|m| m.aupr_out)?,
        tpr_at_fpr: TprAtFprCi {
            fpr_0_01: ci(&|m| m.tpr_at_fpr.fpr_0_01)?,
            fpr_0_05: ci(&|m| m.tpr_at_fpr.fpr_0_05)?,
            fpr_0_10: ci(&|m| m.tpr_at_fpr.fpr_0_10)?,
        },
        tnr_at_tpr95: ci(&|m| m.tnr_at_tpr95)?,
        detection_accuracy: ci(&|m| m.detection_accuracy)?,
        detection_accuracy_at_fpr05: ci(&|m| m.detection_accuracy_at_fpr05)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Xoshiro256pp;

    fn sample(n: usize, seed: u64) -> (Vec<f64>, Vec<bool>) {
        let mut r = Xoshiro256pp::seed_from_u64(seed);
        let mut s = Vec::new();
        let mut l = Vec::new();
        for i in 0..n {
            let y = i % 3 == 0;
            s.push(r.next_f64() + if y { 0.4 } else { 0.0 });
            l.push(y);
        }
        (s, l)
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        // numpy.quantile([1,2,3,4], [0.025, 0.975]) = [1.075, 3.925]
        let i = percentile_interval(&v, 0.95).unwrap();
        assert!((i.lo - 1.075).abs() < 1e-12 && (i.hi - 3.925).abs() < 1e-12);
    }

    #[test]
    fn identical_across_thread_counts() {
        let (s, l) = sample(500, 1);
        let cfg = BootstrapConfig {
            n_resamples: 64,
            seed: 42,
            level: 0.9,
        };
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| bootstrap_detection(&s, &l, &cfg).unwrap())
        };
        let one = run(1);
        let three = run(3);
        assert_eq!(one, three);
        let other_seed = bootstrap_detection(&s, &l, &BootstrapConfig { seed: 43, ..cfg }).unwrap();
        assert_ne!(one, other_seed);
    }

    #[test]
    fn interval_brackets_the_estimate_and_shrinks_with_n() {
        let cfg = BootstrapConfig {
            n_resamples: 200,
            seed: 5,
            level: 0.95,
        };
        let (s, l) = sample(300, 2);
        let point = DetectionMetrics::compute(&s, &l).unwrap().auroc;
        let small = bootstrap_detection(&s, &l, &cfg).unwrap().auroc;
        assert!(small.lo < point && point < small.hi, "{small:?} vs {point}");
        let (s, l) = sample(3000, 2);
        let big = bootstrap_detection(&s, &l, &cfg).unwrap().auroc;
        assert!(big.hi - big.lo < 0.6 * (small.hi - small.lo));
    }

    #[test]
    fn stratified_resamples_keep_class_counts() {
        let (s, l) = sample(90, 3);
        let reps = detection_replicates(&s, &l, &BootstrapConfig::default()).unwrap();
        assert_eq!(reps.len(), 1000);
        assert!(reps.iter().all(|m| m.n_pos == 30 && m.n_neg == 60));
    }

    #[test]
    fn bad_config_is_an_error() {
        let (s, l) = sample(10, 3);
        let cfg = BootstrapConfig {
            n_resamples: 1,
            ..Default::default()
        };
        assert!(bootstrap_detection(&s, &l, &cfg).is_err());
        let cfg = BootstrapConfig {
            level: 1.0,
            ..Default::default()
        };
        assert!(bootstrap_detection(&s, &l, &cfg).is_err());
        // Refused before any work (1e9 resamples used to abort on allocation).
        let cfg = BootstrapConfig {
            n_resamples: 1_000_000_000,
            ..Default::default()
        };
        let e = bootstrap_detection(&s, &l, &cfg).unwrap_err().to_string();
        assert!(e.contains("100000"), "{e}");
    }
}
