//! Classification and calibration metrics of a predictive distribution (ECE and reliability
//! diagrams as in Guo et al., "On Calibration of Modern Neural Networks", ICML 2017).
//!
//! The input is the Monte-Carlo-averaged softmax of the Bayes ensemble, one row per example.
//!
//! # Shapes
//! `probs`: `[N, K]` = examples x classes, each row already averaged over the S posterior
//! samples (`mean_s softmax_s`, the `[N, S, K]` sample axis reduced by the caller).
//!
//! * top-1 / top-k: the true class ranks within the first k when classes are ordered by
//!   decreasing probability, ties broken by class index (so top-1 agrees with numpy's `argmax`).
//! * NLL: mean `-ln p_y`, with `p_y` clamped to at least [`PROB_FLOOR`] so that one confidently
//!   wrong example gives a large finite number rather than `inf`.
//! * Brier: mean over examples of `sum_k (p_k - 1[k = y])^2` (the multi-class Brier score).
//! * ECE: 15 equal-width bins on the max probability, bin b = (b/15, (b+1)/15], with
//!   `ECE = sum_b n_b / N * |acc_b - conf_b|` (Guo et al. 2017); the bins double as the
//!   reliability diagram.
use crate::error::{ReportError, Result};
use ndarray::ArrayView2;
use serde::Serialize;

/// The number of ECE / reliability bins used by [`ClassificationMetrics::compute`].
pub const ECE_BINS: usize = 15;

/// Lower clamp on the true-class probability inside the NLL.
pub const PROB_FLOOR: f64 = 1e-12;

/// Rows must sum to 1 within this tolerance (float32 softmax averages drift by ~1e-6).
pub const ROW_SUM_TOL: f64 = 1e-3;

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReliabilityBin {
    /// Bin edges: the bin holds confidences in `(lo, hi]` (the first bin also holds 0).
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    /// Mean confidence of the bin's examples (0 when empty).
    pub confidence: f64,
    /// Fraction of the bin's examples that are correct (0 when empty).
    pub accuracy: f64,
}

/// Metrics of one predictive distribution against its labels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassificationMetrics {
    pub n: usize,
    pub n_classes: usize,
    pub top1: f64,
    /// Top-5 accuracy (top-K when there are fewer than 5 classes, i.e. 1.0).
    pub top5: f64,
    pub nll: f64,
    pub brier: f64,
    pub ece: f64,
    pub reliability: Vec<ReliabilityBin>,
}

impl ClassificationMetrics {
    /// Validates and computes every metric in one pass over the rows.
    ///
    /// # Shapes
    /// `probs`: `[N, K]` (MC-averaged softmax), `labels`: `[N]` with values in `0..K`.
    pub fn compute<A>(probs: ArrayView2<'_, A>, labels: &[i64]) -> Result<ClassificationMetrics>
    where
        A: Copy + Into<f64>,
    {
        let (n, k) = probs.dim();
        if n != labels.len() {
            return Err(ReportError::LengthMismatch {
                left_name: "probs rows",
                left: n,
                right_name: "labels",
                right: labels.len(),
            });
        }
        if n == 0 || k == 0 {
            return Err(ReportError::Empty {
                what: format!("the probability matrix is empty (shape [{n}, {k}])"),
            });
        }
        let (mut top1, mut top5, mut nll, mut brier) = (0usize, 0usize, 0.0, 0.0);
        let mut conf = Vec::with_capacity(n);
        let mut correct = Vec::with_capacity(n);
        for (i, row) in probs.outer_iter().enumerate() {
            let y = labels[i];
            if y < 0 || y as usize >= k {
                return Err(ReportError::BadRow {
                    row: i,
                    problem: format!("label {y} is outside 0..{k} (K = {k} classes)"),
                });
            }
            let y = y as usize;
            let mut sum = 0.0;
            for (j, &p) in row.iter().enumerate() {
                let p: f64 = p.into();
                if !p.is_finite() || !(0.0..=1.0 + ROW_SUM_TOL).contains(&p) {
                    return Err(ReportError::BadRow {
                        row: i,
                        problem: format!("probability of class {j} is {p}, expected in [0, 1]"),
                    });
                }
                sum += p;
            }
            if (sum - 1.0).abs() > ROW_SUM_TOL {
                return Err(ReportError::BadRow {
                    row: i,
                    problem: format!(
                        "probabilities sum to {sum}, expected 1 (pass the softmax, not logits)"
                    ),
                });
            }
            let py: f64 = row[y].into();
            // Rank of the true class: classes strictly more probable, or equally probable with a
            // smaller index (a stable descending sort).
            let mut rank = 0usize;
            let mut max_p = f64::NEG_INFINITY;
            for (j, &p) in row.iter().enumerate() {
                let p: f64 = p.into();
                if p > py || (p == py && j < y) {
                    rank += 1;
                }
                max_p = max_p.max(p);
                let t = if j == y { 1.0 } else { 0.0 };
                brier += (p - t) * (p - t);
            }
            top1 += (rank == 0) as usize;
            top5 += (rank < 5) as usize;
            nll -= py.max(PROB_FLOOR).ln();
            conf.push(max_p);
            correct.push(rank == 0);
        }
        let reliability = reliability_bins(&conf, &correct, ECE_BINS)?;
        let nf = n as f64;
        Ok(ClassificationMetrics {
            n,
            n_classes: k,
            top1: top1 as f64 / nf,
            top5: top5 as f64 / nf,
            nll: nll / nf,
            brier: brier / nf,
            ece: ece_from_bins(&reliability, n),
            reliability,
        })
    }
}

fn check_conf(confidences: &[f64], correct: &[bool], n_bins: usize) -> Result<()> {
    if confidences.len() != correct.len() {
        return Err(ReportError::LengthMismatch {
            left_name: "confidences",
            left: confidences.len(),
            right_name: "correct",
            right: correct.len(),
        });
    }
    if confidences.is_empty() {
        return Err(ReportError::Empty {
            what: "the confidence list is empty".into(),
        });
    }
    if n_bins == 0 {
        return Err(ReportError::InvalidArgument {
            name: "n_bins",
            value: "0".into(),
            constraint: "need at least one bin",
        });
    }
    if let Some((index, &value)) = confidences
        .iter()
        .enumerate()
        .find(|(_, c)| !(c.is_finite() && (0.0..=1.0).contains(*c)))
    {
        return Err(ReportError::NonFinite {
            what: "confidence (must be a finite number in [0, 1])",
            index,
            value,
        });
    }
    Ok(())
}

/// The bin of confidence `c` among `n` equal-width bins `(b/n, (b+1)/n]`, with 0 in bin 0.
fn bin_of(c: f64, n: usize) -> usize {
    let nf = n as f64;
    // Start from the arithmetic guess and fix it up against the same edges the bins report,
    // so that a confidence exactly on an edge lands in the lower bin whatever the rounding.
    let mut b = ((c * nf).ceil() as usize).saturating_sub(1).min(n - 1);
    while b > 0 && c <= b as f64 / nf {
        b -= 1;
    }
    while b + 1 < n && c > (b + 1) as f64 / nf {
        b += 1;
    }
    b
}

/// Reliability-diagram bins of `confidences` (the max probability) against `correct`.
pub fn reliability_bins(
    confidences: &[f64],
    correct: &[bool],
    n_bins: usize,
) -> Result<Vec<ReliabilityBin>> {
    check_conf(confidences, correct, n_bins)?;
    let mut count = vec![0usize; n_bins];
    let mut sum_conf = vec![0.0; n_bins];
    let mut sum_acc = vec![0usize; n_bins];
    for (&c, &ok) in confidences.iter().zip(correct) {
        let b = bin_of(c, n_bins);
        count[b] += 1;
        sum_conf[b] += c;
        sum_acc[b] += ok as usize;
    }
    Ok((0..n_bins)
        .map(|b| {
            let m = count[b].max(1) as f64;
            ReliabilityBin {
                lo: b as f64 / n_bins as f64,
                hi: (b + 1) as f64 / n_bins as f64,
                count: count[b],
                confidence: sum_conf[b] / m,
                accuracy: sum_acc[b] as f64 / m,
            }
        })
        .collect())
}

fn ece_from_bins(bins: &[ReliabilityBin], n: usize) -> f64 {
    bins.iter()
        .map(|b| b.count as f64 / n as f64 * (b.accuracy - b.confidence).abs())
        .sum()
}

/// Expected calibration error with `n_bins` equal-width bins on the confidence.
///
/// ```
/// use libre_reports::classification::ece;
/// // Two examples at confidence 0.9 (bin (0.8, 0.9]), one right and one wrong: |0.5 - 0.9|.
/// let e = ece(&[0.9, 0.9], &[true, false], 10).unwrap();
/// assert!((e - 0.4).abs() < 1e-12);
/// ```
pub fn ece(confidences: &[f64], correct: &[bool], n_bins: usize) -> Result<f64> {
    let bins = reliability_bins(confidences, correct, n_bins)?;
    Ok(ece_from_bins(&bins, confidences.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn hand_computed_three_examples() {
        let p = array![[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.5, 0.0]];
        let y = [0i64, 1, 1];
        let m = ClassificationMetrics::compute(p.view(), &y).unwrap();
        // Row 2 ties 0.5/0.5: class 0 wins the tie (lower index), so row 2 is wrong at top-1.
        close(m.top1, 1.0 / 3.0);
        close(m.top5, 1.0);
        close(m.nll, -(0.7f64.ln() + 0.3f64.ln() + 0.5f64.ln()) / 3.0);
        let b0 = 0.09 + 0.04 + 0.01;
        let b1 = 0.01 + 0.49 + 0.36;
        let b2 = 0.25 + 0.25;
        close(m.brier, (b0 + b1 + b2) / 3.0);
        // Confidences 0.7 (right), 0.6 (wrong), 0.5 (wrong), each alone in its 15-bin bucket.
        close(m.ece, (0.3 + 0.6 + 0.5) / 3.0);
        assert_eq!(m.reliability.len(), 15);
        assert_eq!(m.reliability.iter().map(|b| b.count).sum::<usize>(), 3);
    }

    #[test]
    fn f32_input_and_top5() {
        let mut rows = vec![0.0f32; 2 * 7];
        // Row 0: true class 6 has the 6th largest probability -> top-5 miss.
        let r0 = [0.2, 0.19, 0.18, 0.17, 0.16, 0.06, 0.04];
        let r1 = [0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.94];
        rows[..7].copy_from_slice(&r0);
        rows[7..].copy_from_slice(&r1);
        let p = ndarray::Array2::from_shape_vec((2, 7), rows).unwrap();
        let m = ClassificationMetrics::compute(p.view(), &[5, 6]).unwrap();
        close(m.top1, 0.5);
        close(m.top5, 0.5);
    }

    #[test]
    fn edges_fall_in_the_lower_bin() {
        for n in [10, 15] {
            for b in 1..=n {
                let edge = b as f64 / n as f64;
                assert_eq!(bin_of(edge, n), b - 1, "edge {edge} of {n} bins");
            }
        }
        assert_eq!(bin_of(0.0, 15), 0);
    }

    #[test]
    fn perfectly_calibrated_bins_have_zero_ece() {
        // 10 examples at confidence 0.75: 7.5 right is impossible, use 0.8 with 8 of 10 right.
        let conf = [0.8; 10];
        let ok = [true, true, true, true, true, true, true, true, false, false];
        close(ece(&conf, &ok, 15).unwrap(), 0.0);
    }

    #[test]
    fn bad_rows_name_the_row() {
        let p = array![[0.5, 0.5], [0.9, 0.3]];
        let e = ClassificationMetrics::compute(p.view(), &[0, 1]).unwrap_err();
        assert!(matches!(e, ReportError::BadRow { row: 1, .. }), "{e}");
        let p = array![[0.5, 0.5]];
        let e = ClassificationMetrics::compute(p.view(), &[2]).unwrap_err();
        assert!(e.to_string().contains("label 2"), "{e}");
        let e = ClassificationMetrics::compute(p.view(), &[0, 1]).unwrap_err();
        assert!(matches!(e, ReportError::LengthMismatch { .. }));
        assert!(ece(&[0.5, f64::NAN], &[true, true], 15).is_err());
        assert!(ece(&[0.5], &[true], 0).is_err());
    }
}
