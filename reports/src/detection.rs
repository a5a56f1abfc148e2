//! Detection metrics for adversarial-example detection: AUROC and AUPR as in Hendrycks and
//! Gimpel (ICLR 2017), TNR at TPR 95% and detection accuracy as in ODIN (Liang et al., ICLR 2018);
//! how libre uses them is in docs/detection.md.
//!
//! Conventions: the positive class is *adversarial* (`label == true`), and the score is an
//! uncertainty (higher = more suspicious). A sample is flagged at threshold `t` when
//! `score >= t`, as in scikit-learn's `roc_curve`.
//!
//! * AUROC equals `sklearn.metrics.roc_auc_score`: tied scores count one half. It is computed
//!   exactly in integer arithmetic (twice the trapezoid area as a sum of counts) and divided once.
//! * AUPR-out is the average precision (`sklearn.metrics.average_precision_score`) with the
//!   adversarial samples as the positive class; AUPR-in is the average precision with the clean
//!   samples as positive and the negated score (Hendrycks & Gimpel's "AUPR In/Out").
//! * TPR at FPR <= b is the largest TPR over ROC points whose FPR is at most `b` (b = 1%, 5%, 10%).
//! * TNR at TPR 95% is `1 - FPR` at the first ROC point (highest threshold) whose TPR >= 0.95.
//! * Detection accuracy is the best *balanced* accuracy `max_t (TPR(t) + TNR(t)) / 2` over all
//!   thresholds (ODIN's definition, which assumes equal priors so that it does not depend on how
//!   many adversarial samples were crafted); [`threshold_for_fpr`] and [`detection_accuracy_at`]
//!   give the deployable variant with a threshold chosen on clean data for a target FPR.
//!
//! Everything is one sort of each class (parallel, rayon) plus one linear sweep over the distinct
//! thresholds, so 10 million scores take well under a second and memory stays linear. Inputs
//! with NaN or infinite scores, a single class, mismatched lengths or no samples are errors,
//! never a silent number.
//!
//! ```
//! use libre_reports::detection::auroc;
//! let scores = [0.1, 0.4, 0.35, 0.8];
//! let labels = [false, false, true, true];
//! assert!((auroc(&scores, &labels).unwrap() - 0.75).abs() < 1e-12);
//! ```
use crate::error::{ReportError, Result};
use rayon::slice::ParallelSliceMut;
use serde::Serialize;

/// The FPR bounds reported by [`DetectionMetrics::tpr_at_fpr`].
pub const FPR_BOUNDS: [f64; 3] = [0.01, 0.05, 0.10];

/// The TPR target of [`DetectionMetrics::tnr_at_tpr95`].
pub const TPR_TARGET: f64 = 0.95;

/// Checks lengths, finiteness and that both classes are present; returns `(n_pos, n_neg)`.
pub fn validate(scores: &[f64], labels: &[bool]) -> Result<(usize, usize)> {
    if scores.len() != labels.len() {
        return Err(ReportError::LengthMismatch {
            left_name: "scores",
            left: scores.len(),
            right_name: "labels",
            right: labels.len(),
        });
    }
    if scores.is_empty() {
        return Err(ReportError::Empty {
            what: "the score list is empty".into(),
        });
    }
    if let Some((index, &value)) = scores.iter().enumerate().find(|(_, s)| !s.is_finite()) {
        return Err(ReportError::NonFinite {
            what: "score",
            index,
            value,
        });
    }
    let n_pos = labels.iter().filter(|&&l| l).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Err(ReportError::OneClass { n_pos, n_neg });
    }
    Ok((n_pos, n_neg))
}

/// An order-preserving map from finite f64 to u64 (`a < b` iff `key(a) < key(b)`), with -0.0
/// and 0.0 mapped to the same key so that they form one threshold, as in numpy.
#[inline]
fn key(x: f64) -> u64 {
    let b = (x + 0.0).to_bits(); // -0.0 + 0.0 == +0.0
    if b >> 63 == 1 {
        !b
    } else {
        b | (1 << 63)
    }
}

/// The inverse of [`key`].
#[inline]
fn unkey(k: u64) -> f64 {
    f64::from_bits(if k >> 63 == 1 { k & !(1 << 63) } else { !k })
}

/// Sorts keys decreasingly with an LSD radix sort (8-bit digits, passes whose digit is the
/// same for every key are skipped): O(n), about 4x faster than a comparison sort on 10^7 keys.
fn radix_sort_desc(keys: &mut [u64]) {
    let n = keys.len();
    if n < 512 {
        keys.sort_unstable_by(|a, b| b.cmp(a));
        return;
    }
    let mut hist = vec![[0usize; 256]; 8];
    for &k in keys.iter() {
        for (d, h) in hist.iter_mut().enumerate() {
            h[((k >> (8 * d)) & 0xff) as usize] += 1;
        }
    }
    let mut buf = vec![0u64; n];
    let mut in_buf = false;
    for (d, h) in hist.iter().enumerate() {
        if h.contains(&n) {
            continue;
        }
        // Descending: the highest digit value goes first; each pass is stable.
        let mut off = [0usize; 256];
        let mut acc = 0;
        for b in (0..256).rev() {
            off[b] = acc;
            acc += h[b];
        }
        let (src, dst): (&[u64], &mut [u64]) = if in_buf {
            (&buf[..], &mut keys[..])
        } else {
            (&keys[..], &mut buf[..])
        };
        // Safe indexing keeps this simple; the bounds checks cost little next to the scatter.
        for &k in src {
            let b = ((k >> (8 * d)) & 0xff) as usize;
            dst[off[b]] = k;
            off[b] += 1;
        }
        in_buf = !in_buf;
    }
    if in_buf {
        keys.copy_from_slice(&buf);
    }
}

/// Splits the scores by class as sort keys, each class sorted decreasingly (in parallel).
fn split_sorted(scores: &[f64], labels: &[bool], n_pos: usize) -> (Vec<u64>, Vec<u64>) {
    let mut pos = Vec::with_capacity(n_pos);
    let mut neg = Vec::with_capacity(scores.len() - n_pos);
    for (&s, &l) in scores.iter().zip(labels) {
        if l {
            pos.push(key(s))
        } else {
            neg.push(key(s))
        }
    }
    // Sorting the two classes separately (8-byte keys, no payload) and merging is faster than
    // sorting (score, label) pairs, and the merge yields the per-threshold counts directly.
    rayon::join(|| radix_sort_desc(&mut pos), || radix_sort_desc(&mut neg));
    (pos, neg)
}

/// Calls `f(threshold, new_pos, new_neg)` for each distinct score, from the highest down, with
/// how many positives and negatives have exactly that score. Both inputs sorted decreasingly.
fn merge_distinct(pos: &[u64], neg: &[u64], mut f: impl FnMut(f64, u64, u64)) {
    let (mut i, mut j) = (0, 0);
    while i < pos.len() || j < neg.len() {
        let t = match (pos.get(i), neg.get(j)) {
            (Some(&p), Some(&n)) => p.max(n),
            (Some(&p), None) => p,
            (None, Some(&n)) => n,
            (None, None) => unreachable!(),
        };
        let i0 = i;
        while i < pos.len() && pos[i] == t {
            i += 1;
        }
        let j0 = j;
        while j < neg.len() && neg[j] == t {
            j += 1;
        }
        f(unkey(t), (i - i0) as u64, (j - j0) as u64);
    }
}

/// The largest count `c` in `0..=n` with `c as f64 / n as f64 <= bound` (the same rounding as
/// a float comparison of rates, so results match scikit-learn exactly at the boundaries).
fn max_count_within(bound: f64, n: u64) -> u64 {
    let nf = n as f64;
    let mut c = ((bound * nf).floor().max(0.0) as u64).min(n);
    while c < n && ((c + 1) as f64 / nf) <= bound {
        c += 1;
    }
    while c > 0 && (c as f64 / nf) > bound {
        c -= 1;
    }
    c
}

/// The smallest count `c` with `c as f64 / n as f64 >= target` (n + 1 when none).
fn min_count_reaching(target: f64, n: u64) -> u64 {
    let nf = n as f64;
    let mut c = ((target * nf).ceil().max(0.0) as u64).min(n + 1);
    while c > 0 && ((c - 1) as f64 / nf) >= target {
        c -= 1;
    }
    while c <= n && (c as f64 / nf) < target {
        c += 1;
    }
    c
}

/// One pass over the distinct thresholds (highest first) accumulating every metric. The rate
/// comparisons are done on integer counts (bounds precomputed once), so the per-threshold work
/// is a few integer operations and at most two divisions (the precisions of the two APs).
#[derive(Debug, Clone)]
pub(crate) struct Sweep {
    n_pos: u64,
    n_neg: u64,
    tp: u64,
    fp: u64,
    /// Twice the ROC area times n_pos * n_neg: exact in integers.
    auc2: u128,
    ap_out: f64,
    ap_in: f64,
    /// Largest fp allowed by each FPR bound, and the tp and fp of the last point within it.
    max_fp: [u64; 3],
    tp_at_fpr: [u64; 3],
    fp_at_fpr: [u64; 3],
    /// Smallest tp with TPR >= 95%, and the fp at the first threshold reaching it.
    min_tp95: u64,
    fp_at_tp95: Option<u64>,
    /// Best `tp * n_neg - fp * n_pos` (balanced accuracy scaled by 2 n_pos n_neg, minus const).
    best_bal: i128,
    best_threshold: f64,
}

impl Sweep {
    pub(crate) fn new(n_pos: u64, n_neg: u64) -> Self {
        Sweep {
            n_pos,
            n_neg,
            tp: 0,
            fp: 0,
            auc2: 0,
            ap_out: 0.0,
            ap_in: 0.0,
            max_fp: FPR_BOUNDS.map(|b| max_count_within(b, n_neg)),
            // The ROC curve starts at (0, 0) (threshold +inf): TPR 0 qualifies for every bound.
            tp_at_fpr: [0; 3],
            fp_at_fpr: [0; 3],
            min_tp95: min_count_reaching(TPR_TARGET, n_pos),
            fp_at_tp95: None,
            // Flagging nothing: TPR 0, TNR 1.
            best_bal: 0,
            best_threshold: f64::INFINITY,
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, threshold: f64, dpos: u64, dneg: u64) {
        let (prev_tp, prev_fp) = (self.tp, self.fp);
        self.tp += dpos;
        self.fp += dneg;
        self.auc2 += dneg as u128 * (self.tp + prev_tp) as u128;
        // Average precision: recall step times precision at this threshold. Computed without
        // `if dpos > 0` on purpose: the class of the next threshold is unpredictable, and a
        // zero step adds exactly 0 (the denominators are >= 1 because dpos + dneg >= 1).
        self.ap_out += dpos as f64 * (self.tp as f64 / (self.tp + self.fp) as f64);
        // The same with the classes swapped and the score negated: at this threshold the
        // reversed sweep flags everything *not* flagged before it (score <= t); at least this
        // threshold's samples remain, so the denominator is >= 1.
        let tp_in = self.n_neg - prev_fp;
        let fp_in = self.n_pos - prev_tp;
        self.ap_in += dneg as f64 * (tp_in as f64 / (tp_in + fp_in) as f64);
        for k in 0..3 {
            if self.fp <= self.max_fp[k] {
                self.tp_at_fpr[k] = self.tp;
                self.fp_at_fpr[k] = self.fp;
            }
        }
        if self.fp_at_tp95.is_none() && self.tp >= self.min_tp95 {
            self.fp_at_tp95 = Some(self.fp);
        }
        let bal = self.tp as i128 * self.n_neg as i128 - self.fp as i128 * self.n_pos as i128;
        if bal > self.best_bal {
            self.best_bal = bal;
            self.best_threshold = threshold;
        }
    }

    pub(crate) fn finish(self) -> DetectionMetrics {
        let (n_pos, n_neg) = (self.n_pos as f64, self.n_neg as f64);
        let tpr_at = |k: usize| self.tp_at_fpr[k] as f64 / n_pos;
        // Recover the best balanced accuracy from the counts of its threshold: the integer
        // objective only ranked them.
        let best = 0.5 + self.best_bal as f64 / (2.0 * n_pos * n_neg);
        DetectionMetrics {
            auroc: self.auc2 as f64 / (2.0 * n_pos * n_neg),
            aupr_in: self.ap_in / n_neg,
            aupr_out: self.ap_out / n_pos,
            tpr_at_fpr: TprAtFpr {
                fpr_0_01: tpr_at(0),
                fpr_0_05: tpr_at(1),
                fpr_0_10: tpr_at(2),
            },
            // Every sweep ends at TPR 1, so the target is always reached.
            tnr_at_tpr95: 1.0 - self.fp_at_tp95.unwrap_or(self.n_neg) as f64 / n_neg,
            detection_accuracy: best,
            best_threshold: self.best_threshold,
            detection_accuracy_at_fpr05: 0.5 * (tpr_at(1) + 1.0 - self.fp_at_fpr[1] as f64 / n_neg),
            n_pos: self.n_pos as usize,
            n_neg: self.n_neg as usize,
        }
    }
}

/// TPR at the largest threshold whose FPR is within each bound of [`FPR_BOUNDS`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TprAtFpr {
    #[serde(rename = "0.01")]
    pub fpr_0_01: f64,
    #[serde(rename = "0.05")]
    pub fpr_0_05: f64,
    #[serde(rename = "0.10")]
    pub fpr_0_10: f64,
}

impl TprAtFpr {
    /// The values in the order of [`FPR_BOUNDS`].
    pub fn as_array(&self) -> [f64; 3] {
        [self.fpr_0_01, self.fpr_0_05, self.fpr_0_10]
    }
}

/// All threshold-free detection metrics of one score set (see the module docs for definitions).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectionMetrics {
    pub auroc: f64,
    pub aupr_in: f64,
    pub aupr_out: f64,
    pub tpr_at_fpr: TprAtFpr,
    pub tnr_at_tpr95: f64,
    /// Best balanced accuracy `(TPR + TNR) / 2` over thresholds.
    pub detection_accuracy: f64,
    /// The threshold reaching `detection_accuracy` (flag when `score >= best_threshold`).
    pub best_threshold: f64,
    /// Balanced accuracy `(TPR + TNR) / 2` at the ROC operating point of `tpr_at_fpr["0.05"]`
    /// (the lowest threshold whose FPR is at most 5%): the in-sample value of a detector whose
    /// threshold is set for a 5% false-alarm budget.
    pub detection_accuracy_at_fpr05: f64,
    /// Number of adversarial (label 1) samples.
    pub n_pos: usize,
    /// Number of clean (label 0) samples.
    pub n_neg: usize,
}

impl DetectionMetrics {
    /// Computes every metric with one sort per class and one sweep.
    pub fn compute(scores: &[f64], labels: &[bool]) -> Result<DetectionMetrics> {
        let (n_pos, n_neg) = validate(scores, labels)?;
        let (pos, neg) = split_sorted(scores, labels, n_pos);
        let mut sweep = Sweep::new(n_pos as u64, n_neg as u64);
        merge_distinct(&pos, &neg, |t, dp, dn| sweep.push(t, dp, dn));
        Ok(sweep.finish())
    }
}

/// Area under the ROC curve, ties counting one half (as `sklearn.metrics.roc_auc_score`).
pub fn auroc(scores: &[f64], labels: &[bool]) -> Result<f64> {
    Ok(DetectionMetrics::compute(scores, labels)?.auroc)
}

/// Average precision with the adversarial samples as positive (`average_precision_score`).
pub fn average_precision(scores: &[f64], labels: &[bool]) -> Result<f64> {
    Ok(DetectionMetrics::compute(scores, labels)?.aupr_out)
}

/// An ROC curve: one point per distinct threshold, plus the starting point (0, 0) at +inf.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RocCurve {
    pub fpr: Vec<f64>,
    pub tpr: Vec<f64>,
    /// Decreasing; the first is `f64::INFINITY` (scikit-learn >= 1.3 does the same).
    pub thresholds: Vec<f64>,
}

/// The full ROC curve (as `sklearn.metrics.roc_curve(..., drop_intermediate=False)`).
pub fn roc_curve(scores: &[f64], labels: &[bool]) -> Result<RocCurve> {
    let (n_pos, n_neg) = validate(scores, labels)?;
    let (pos, neg) = split_sorted(scores, labels, n_pos);
    let mut curve = RocCurve {
        fpr: vec![0.0],
        tpr: vec![0.0],
        thresholds: vec![f64::INFINITY],
    };
    let (mut tp, mut fp) = (0u64, 0u64);
    merge_distinct(&pos, &neg, |t, dp, dn| {
        tp += dp;
        fp += dn;
        curve.fpr.push(fp as f64 / n_neg as f64);
        curve.tpr.push(tp as f64 / n_pos as f64);
        curve.thresholds.push(t);
    });
    Ok(curve)
}

impl RocCurve {
    /// At most about `max_points` points for plotting: collinear interior points are dropped
    /// first (scikit-learn's `drop_intermediate`), then points closer than `1 / max_points` in
    /// both coordinates to the last kept one. The first and last points are always kept, and the
    /// curve stays a staircase-faithful outline at plot resolution.
    pub fn thin(&self, max_points: usize) -> RocCurve {
        let n = self.fpr.len();
        if n <= max_points.max(2) {
            return self.clone();
        }
        let step = 1.0 / max_points.max(1) as f64;
        let mut out = RocCurve {
            fpr: vec![self.fpr[0]],
            tpr: vec![self.tpr[0]],
            thresholds: vec![self.thresholds[0]],
        };
        for i in 1..n - 1 {
            let collinear = (self.fpr[i] - self.fpr[i - 1]) * (self.tpr[i + 1] - self.tpr[i])
                == (self.tpr[i] - self.tpr[i - 1]) * (self.fpr[i + 1] - self.fpr[i]);
            let last = out.fpr.len() - 1;
            let close = (self.fpr[i] - out.fpr[last]).abs() < step
                && (self.tpr[i] - out.tpr[last]).abs() < step;
            if !collinear && !close {
                out.fpr.push(self.fpr[i]);
                out.tpr.push(self.tpr[i]);
                out.thresholds.push(self.thresholds[i]);
            }
        }
        out.fpr.push(self.fpr[n - 1]);
        out.tpr.push(self.tpr[n - 1]);
        out.thresholds.push(self.thresholds[n - 1]);
        out
    }
}

/// The threshold at a target false-positive rate on clean scores: the smallest value `t` such
/// that at most `floor(target_fpr * n)` of the n clean scores reach it (flagged = `score >= t`),
/// so the rate on these scores never exceeds the target; the deployable rule "calibrate the
/// threshold on held-out clean data", and the one rule of every libre threshold (`libre
/// calibrate`, the robust table). With k = floor(target_fpr * n): the k-th largest score, moved
/// just above it (the next float up) when tied scores straddle position k; just above the
/// maximum when k = 0 (nothing may be flagged).
///
/// It only sees clean scores; the ROC operating point behind
/// [`DetectionMetrics::detection_accuracy_at_fpr05`] may sit lower, anywhere above the next
/// clean score, which can only flag more adversarial samples at the same FPR.
pub fn threshold_for_fpr(clean_scores: &[f64], target_fpr: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&target_fpr) {
        return Err(ReportError::InvalidArgument {
            name: "target_fpr",
            value: target_fpr.to_string(),
            constraint: "must lie in [0, 1]",
        });
    }
    let labels = vec![false; clean_scores.len()];
    // Reuse the validation for emptiness and finiteness (one class is expected here).
    match validate(clean_scores, &labels) {
        Err(ReportError::OneClass { .. }) => {}
        Err(e) => return Err(e),
        Ok(_) => unreachable!("all labels are false"),
    }
    let n = clean_scores.len();
    let mut v = clean_scores.to_vec();
    // A stable sort: of equal values (0.0 and -0.0) the threshold is the one the input lists
    // first, as it always was.
    v.sort_by(|a, b| b.partial_cmp(a).expect("finite")); // descending
    let k = (target_fpr * n as f64).floor() as usize;
    // Candidate: the k-th largest score flags at least k; with ties it may flag more, so move up
    // to the next distinct value until at most k reach it.
    let mut t = if k == 0 { next_up(v[0]) } else { v[k - 1] };
    let count = |t: f64| v.iter().take_while(|&&s| s >= t).count();
    if count(t) > k {
        // Tied scores straddle position k: the threshold goes just above the tied value.
        t = next_up(t);
    }
    Ok(t)
}

/// The smallest float above `x` (for "flag nothing": a threshold just above the maximum).
fn next_up(x: f64) -> f64 {
    if x.is_nan() || x == f64::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f64::from_bits(1);
    }
    let b = x.to_bits();
    f64::from_bits(if x > 0.0 { b + 1 } else { b - 1 })
}

/// Balanced detection accuracy `(TPR + TNR) / 2` when flagging `score >= threshold`.
pub fn detection_accuracy_at(scores: &[f64], labels: &[bool], threshold: f64) -> Result<f64> {
    let (n_pos, n_neg) = validate(scores, labels)?;
    let (mut tp, mut tn) = (0usize, 0usize);
    for (&s, &l) in scores.iter().zip(labels) {
        match (l, s >= threshold) {
            (true, true) => tp += 1,
            (false, false) => tn += 1,
            _ => {}
        }
    }
    Ok(0.5 * (tp as f64 / n_pos as f64 + tn as f64 / n_neg as f64))
}

/// Scores sorted once (decreasingly) with their tie groups, for the bootstrap: a resample is a
/// vector of multiplicities over these positions, swept in O(n) without re-sorting.
#[derive(Debug, Clone)]
pub(crate) struct Presorted {
    pub scores: Vec<f64>,
    pub labels: Vec<bool>,
    /// `true` where a new distinct score starts.
    pub group_start: Vec<bool>,
    /// Sorted positions of the adversarial / clean samples.
    pub pos_at: Vec<u32>,
    pub neg_at: Vec<u32>,
}

impl Presorted {
    pub(crate) fn new(scores: &[f64], labels: &[bool]) -> Result<Presorted> {
        validate(scores, labels)?;
        if scores.len() > u32::MAX as usize {
            return Err(ReportError::InvalidArgument {
                name: "scores.len()",
                value: scores.len().to_string(),
                constraint: "the bootstrap supports at most 2^32 - 1 samples",
            });
        }
        let mut pairs: Vec<(f64, bool)> =
            scores.iter().copied().zip(labels.iter().copied()).collect();
        pairs.par_sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        let mut out = Presorted {
            scores: Vec::with_capacity(pairs.len()),
            labels: Vec::with_capacity(pairs.len()),
            group_start: Vec::with_capacity(pairs.len()),
            pos_at: Vec::new(),
            neg_at: Vec::new(),
        };
        for (i, &(s, l)) in pairs.iter().enumerate() {
            out.group_start.push(i == 0 || s != pairs[i - 1].0);
            out.scores.push(s);
            out.labels.push(l);
            if l {
                out.pos_at.push(i as u32);
            } else {
                out.neg_at.push(i as u32);
            }
        }
        Ok(out)
    }

    /// Metrics of the weighted sample where position `i` occurs `counts[i]` times, of which
    /// `n_pos` adversarial and `n_neg` clean in total (known in a stratified bootstrap).
    pub(crate) fn sweep_weighted(
        &self,
        counts: &[u32],
        n_pos: u64,
        n_neg: u64,
    ) -> DetectionMetrics {
        let mut sweep = Sweep::new(n_pos, n_neg);
        let (mut dp, mut dn, mut t) = (0u64, 0u64, f64::INFINITY);
        for i in 0..counts.len() {
            if self.group_start[i] {
                if dp + dn > 0 {
                    sweep.push(t, dp, dn);
                }
                dp = 0;
                dn = 0;
                t = self.scores[i];
            }
            // Branch-free split of the count by label: the labels are unpredictable.
            let c = counts[i] as u64;
            let l = self.labels[i] as u64;
            dp += c * l;
            dn += c * (1 - l);
        }
        if dp + dn > 0 {
            sweep.push(t, dp, dn);
        }
        sweep.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn hand_computed_small_case() {
        // Pairs (pos, neg): 0.35 vs 0.1 win, 0.35 vs 0.4 lose, 0.8 beats both: 3/4.
        let s = [0.1, 0.4, 0.35, 0.8];
        let l = [false, false, true, true];
        let m = DetectionMetrics::compute(&s, &l).unwrap();
        close(m.auroc, 0.75);
        // Descending: 0.8(+) P=1 R=.5; 0.4(-); 0.35(+) P=2/3 R=1 -> AP = .5*1 + .5*2/3.
        close(m.aupr_out, 0.5 + 1.0 / 3.0);
        // Clean as positive on -score: ascending 0.1(c) P=1; 0.35(a); 0.4(c) P=2/3.
        close(m.aupr_in, 0.5 + 1.0 / 3.0);
        close(m.tnr_at_tpr95, 0.5);
        // Best balanced accuracy: threshold 0.8 gives (.5 + 1)/2 = .75; 0.35 gives (1 + .5)/2.
        close(m.detection_accuracy, 0.75);
        assert_eq!((m.n_pos, m.n_neg), (2, 2));
    }

    #[test]
    fn ties_count_half() {
        // One pos and one neg tied at 0.5, another pos above: pairs 1 + 1 + 0.5 + 1 = ...
        let s = [0.5, 0.5, 0.9, 0.2];
        let l = [true, false, true, false];
        // pos {0.5, 0.9} vs neg {0.5, 0.2}: (0.5,0.5)=.5, (0.5,0.2)=1, (0.9,*)=2 -> 3.5/4.
        close(auroc(&s, &l).unwrap(), 0.875);
        // AP: 0.9(+) P=1 R=.5; tie group 0.5 (+,-): P=2/3 R=1 -> .5 + .5*2/3.
        close(average_precision(&s, &l).unwrap(), 0.5 + 1.0 / 3.0);
    }

    #[test]
    fn all_equal_scores_give_chance() {
        let s = [3.0; 7];
        let l = [true, false, false, true, false, true, false];
        let m = DetectionMetrics::compute(&s, &l).unwrap();
        close(m.auroc, 0.5);
        close(m.aupr_out, 3.0 / 7.0);
        close(m.aupr_in, 4.0 / 7.0);
        close(m.tpr_at_fpr.fpr_0_10, 0.0);
        close(m.tnr_at_tpr95, 0.0);
        close(m.detection_accuracy, 0.5);
    }

    #[test]
    fn perfect_and_inverted_separation() {
        let s = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9];
        let l = [false, false, false, true, true, true];
        let m = DetectionMetrics::compute(&s, &l).unwrap();
        close(m.auroc, 1.0);
        close(m.aupr_in, 1.0);
        close(m.aupr_out, 1.0);
        assert_eq!(m.tpr_at_fpr.as_array(), [1.0; 3]);
        close(m.tnr_at_tpr95, 1.0);
        close(m.detection_accuracy, 1.0);
        close(m.detection_accuracy_at_fpr05, 1.0);
        assert_eq!(m.best_threshold, 0.7);
        let inv: Vec<bool> = l.iter().map(|&x| !x).collect();
        let m = DetectionMetrics::compute(&s, &inv).unwrap();
        close(m.auroc, 0.0);
        assert_eq!(m.tpr_at_fpr.as_array(), [0.0; 3]);
        close(m.tnr_at_tpr95, 0.0);
        // Flagging nothing is the best a wrong-way detector can do.
        close(m.detection_accuracy, 0.5);
        // AP of the worst ranking: positives last, precision 1/4, 2/5, 3/6.
        close(m.aupr_out, (0.25 + 0.4 + 0.5) / 3.0);
    }

    #[test]
    fn tpr_at_fpr_uses_largest_point_within_bound() {
        // 20 clean 0..19 (score i/100), 10 adversarial above all but the top clean one.
        let mut s: Vec<f64> = (0..20).map(|i| i as f64 / 100.0).collect();
        let mut l = vec![false; 20];
        s.extend((0..10).map(|i| 0.185 - i as f64 * 1e-4));
        l.extend([true; 10]);
        let m = DetectionMetrics::compute(&s, &l).unwrap();
        // FPR 1/20 = 0.05 after the top clean score 0.19: all adversarial are flagged at FPR 0.05.
        assert_eq!(m.tpr_at_fpr.as_array(), [0.0, 1.0, 1.0]);
        close(m.tnr_at_tpr95, 0.95);
        // The ROC point of TPR@5% (threshold 0.1841) flags all adversarial and 1 of 20 clean.
        close(m.detection_accuracy_at_fpr05, 0.5 * (1.0 + 0.95));
        // Calibrated on the clean scores alone the threshold is the top clean score 0.19,
        // which flags that one clean input and no adversarial one.
        let t = threshold_for_fpr(&s[..20], 0.05).unwrap();
        assert_eq!(t, 0.19);
        close(
            detection_accuracy_at(&s, &l, t).unwrap(),
            0.5 * (0.0 + 0.95),
        );
    }

    #[test]
    fn roc_curve_points() {
        let s = [0.1, 0.4, 0.35, 0.8];
        let l = [false, false, true, true];
        let c = roc_curve(&s, &l).unwrap();
        assert_eq!(c.fpr, vec![0.0, 0.0, 0.5, 0.5, 1.0]);
        assert_eq!(c.tpr, vec![0.0, 0.5, 0.5, 1.0, 1.0]);
        assert_eq!(c.thresholds, vec![f64::INFINITY, 0.8, 0.4, 0.35, 0.1]);
        let thin = c.thin(2);
        assert_eq!(thin.fpr.first(), Some(&0.0));
        assert_eq!(thin.tpr.last(), Some(&1.0));
        assert!(thin.fpr.len() <= c.fpr.len());
    }

    #[test]
    fn negative_zero_and_zero_are_one_threshold() {
        let s = [0.0, -0.0];
        let l = [true, false];
        close(auroc(&s, &l).unwrap(), 0.5);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(auroc(&[], &[]), Err(ReportError::Empty { .. })));
        assert!(matches!(
            auroc(&[1.0], &[true, false]),
            Err(ReportError::LengthMismatch { .. })
        ));
        assert!(matches!(
            auroc(&[1.0, f64::NAN], &[true, false]),
            Err(ReportError::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            auroc(&[1.0, f64::INFINITY], &[true, false]),
            Err(ReportError::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            auroc(&[1.0, 2.0], &[true, true]),
            Err(ReportError::OneClass { n_pos: 2, n_neg: 0 })
        ));
    }

    #[test]
    fn threshold_on_clean_data() {
        let clean: Vec<f64> = (0..100).map(|i| i as f64).collect();
        // Flag score >= 95: 5 of 100 clean = 5%.
        assert_eq!(threshold_for_fpr(&clean, 0.05).unwrap(), 95.0);
        assert_eq!(
            threshold_for_fpr(&clean, 0.0).unwrap(),
            f64::from_bits(99.0f64.to_bits() + 1)
        );
        assert_eq!(threshold_for_fpr(&clean, 1.0).unwrap(), 0.0);
        assert!(threshold_for_fpr(&clean, 1.5).is_err());
        let s = [0.0, 1.0, 2.0, 3.0];
        let l = [false, false, true, true];
        close(detection_accuracy_at(&s, &l, 2.0).unwrap(), 1.0);
        close(detection_accuracy_at(&s, &l, 3.0).unwrap(), 0.75);
    }

    #[test]
    fn weighted_sweep_matches_expanded_sample() {
        let s = [0.3, 0.1, 0.3, 0.9, 0.5, 0.2];
        let l = [true, false, false, true, false, true];
        let pre = Presorted::new(&s, &l).unwrap();
        let counts = [2u32, 0, 1, 3, 1, 1];
        let mut es = Vec::new();
        let mut el = Vec::new();
        for (i, &c) in counts.iter().enumerate() {
            for _ in 0..c {
                es.push(pre.scores[i]);
                el.push(pre.labels[i]);
            }
        }
        let expect = DetectionMetrics::compute(&es, &el).unwrap();
        let n_pos = el.iter().filter(|&&y| y).count() as u64;
        let got = pre.sweep_weighted(&counts, n_pos, el.len() as u64 - n_pos);
        close(got.auroc, expect.auroc);
        close(got.aupr_in, expect.aupr_in);
        close(got.aupr_out, expect.aupr_out);
        close(got.tnr_at_tpr95, expect.tnr_at_tpr95);
        close(got.detection_accuracy, expect.detection_accuracy);
    }

    #[test]
    fn count_bounds_match_float_rates() {
        for n in [1u64, 7, 20, 100, 999, 1000, 12345] {
            for &b in &[0.0, 0.01, 0.05, 0.1, 0.95, 1.0] {
                let c = max_count_within(b, n);
                assert!(c as f64 / n as f64 <= b && (c == n || (c + 1) as f64 / n as f64 > b));
                let m = min_count_reaching(b, n);
                assert!(m as f64 / n as f64 >= b && (m == 0 || ((m - 1) as f64) / (n as f64) < b));
            }
        }
    }

    proptest! {
        #[test]
        fn radix_sort_matches_comparison_sort(
            v in proptest::collection::vec(-1e6f64..1e6, 0..3000),
            ints in proptest::collection::vec(-3i8..3, 0..1000),
        ) {
            for data in [v, ints.iter().map(|&i| i as f64 * 0.25).collect::<Vec<_>>()] {
                let mut keys: Vec<u64> = data.iter().map(|&x| key(x)).collect();
                radix_sort_desc(&mut keys);
                let got: Vec<f64> = keys.iter().map(|&k| unkey(k)).collect();
                let mut want = data.clone();
                want.sort_unstable_by(|a, b| b.partial_cmp(a).unwrap());
                prop_assert_eq!(got, want);
            }
        }

        #[test]
        fn auroc_of_negated_score_is_complement(
            data in proptest::collection::vec((-5i32..5, any::<bool>()), 2..200)
        ) {
            // Small integer scores force many ties.
            let s: Vec<f64> = data.iter().map(|&(x, _)| x as f64 * 0.5).collect();
            let l: Vec<bool> = data.iter().map(|&(_, y)| y).collect();
            prop_assume!(l.iter().any(|&y| y) && l.iter().any(|&y| !y));
            let neg: Vec<f64> = s.iter().map(|x| -x).collect();
            let a = auroc(&s, &l).unwrap();
            let b = auroc(&neg, &l).unwrap();
            prop_assert!((a + b - 1.0).abs() < 1e-12, "{} + {} != 1", a, b);
            // And AUROC equals the Mann-Whitney pair count.
            let (mut wins, mut pairs) = (0.0, 0.0);
            for (i, &li) in l.iter().enumerate() {
                for (j, &lj) in l.iter().enumerate() {
                    if li && !lj {
                        pairs += 1.0;
                        wins += if s[i] > s[j] { 1.0 } else if s[i] == s[j] { 0.5 } else { 0.0 };
                    }
                }
            }
            prop_assert!((a - wins / pairs).abs() < 1e-12);
        }
    }
}
