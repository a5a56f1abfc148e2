//! Attack outcome statistics for a batch or a stream of batches (docs/design.md section 9
//! conventions): clean and robust accuracy, success rate, and the mean / max l_inf and l_2
//! distances.
//!
//! Success rate counts only inputs the victim classifies correctly when clean: untargeted, the
//! adversarial prediction differs from the label; targeted, it equals the target.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{AttackError, Result};
use crate::victim::{predict, Victim};

/// Summary of an attack run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackReport {
    pub n: usize,
    pub clean_accuracy: f64,
    pub robust_accuracy: f64,
    /// Fraction of clean-correct inputs the attack fooled (or moved to the target).
    pub success_rate: f64,
    pub mean_linf: f64,
    pub max_linf: f64,
    pub mean_l2: f64,
    pub max_l2: f64,
}

impl AttackReport {
    /// Report of one batch: predicts clean and adversarial inputs with `victim` (no gradients).
    /// `targets` is `Some` for targeted attacks.
    pub fn compute(
        victim: &dyn Victim,
        x: &Tensor,
        x_adv: &Tensor,
        y: &Tensor,
        targets: Option<&Tensor>,
    ) -> Result<AttackReport> {
        let mut acc = ReportAccumulator::default();
        acc.add(victim, x, x_adv, y, targets)?;
        Ok(acc.finish())
    }
}

/// Streaming accumulator: add batches, then [`ReportAccumulator::finish`]. Memory is O(1).
#[derive(Debug, Clone, Default)]
pub struct ReportAccumulator {
    n: usize,
    clean_correct: usize,
    robust_correct: usize,
    successes: usize,
    sum_linf: f64,
    max_linf: f64,
    sum_l2: f64,
    max_l2: f64,
}

impl ReportAccumulator {
    /// Adds one batch, predicting with `victim` (e.g. the target model of a transfer attack).
    pub fn add(
        &mut self,
        victim: &dyn Victim,
        x: &Tensor,
        x_adv: &Tensor,
        y: &Tensor,
        targets: Option<&Tensor>,
    ) -> Result<()> {
        let clean = predict(victim, x);
        let adv = predict(victim, x_adv);
        self.add_predictions(x, x_adv, y, &clean, &adv, targets)
    }

    /// Adds one batch from precomputed predictions `[B]`.
    pub fn add_predictions(
        &mut self,
        x: &Tensor,
        x_adv: &Tensor,
        y: &Tensor,
        clean_pred: &Tensor,
        adv_pred: &Tensor,
        targets: Option<&Tensor>,
    ) -> Result<()> {
        if x.size() != x_adv.size() || x.dim() < 1 {
            return Err(AttackError::shape(
                "report",
                "x_adv",
                x_adv.size(),
                &format!("{:?}", x.size()),
            ));
        }
        let b = x.size()[0];
        for (what, t) in [
            ("labels", y),
            ("clean predictions", clean_pred),
            ("adversarial predictions", adv_pred),
        ] {
            if t.size() != [b] {
                return Err(AttackError::shape(
                    "report",
                    what,
                    t.size(),
                    &format!("[{b}]"),
                ));
            }
        }
        if let Some(t) = targets {
            if t.size() != [b] {
                return Err(AttackError::shape(
                    "report",
                    "targets",
                    t.size(),
                    &format!("[{b}]"),
                ));
            }
        }
        if b == 0 {
            return Ok(());
        }
        tch::no_grad(|| {
            let count =
                |t: &Tensor| t.to_kind(Kind::Int64).sum(Kind::Int64).int64_value(&[]) as usize;
            let clean_ok = clean_pred.eq_tensor(y);
            let adv_ok = adv_pred.eq_tensor(y);
            let fooled = match targets {
                Some(t) => adv_pred.eq_tensor(t),
                None => adv_ok.logical_not(),
            };
            self.n += b as usize;
            self.clean_correct += count(&clean_ok);
            self.robust_correct += count(&adv_ok);
            self.successes += count(&clean_ok.logical_and(&fooled));
            let d = (x_adv - x).to_kind(Kind::Double).flatten(1, -1); // [B, D]
            let linf = d.abs().amax(1, false);
            let l2 = d.square().sum_dim_intlist(1, false, Kind::Double).sqrt();
            self.sum_linf += linf.sum(Kind::Double).double_value(&[]);
            self.sum_l2 += l2.sum(Kind::Double).double_value(&[]);
            self.max_linf = self.max_linf.max(linf.max().double_value(&[]));
            self.max_l2 = self.max_l2.max(l2.max().double_value(&[]));
        });
        Ok(())
    }

    /// The report of everything added so far (zeros when nothing was added).
    pub fn finish(&self) -> AttackReport {
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        AttackReport {
            n: self.n,
            clean_accuracy: ratio(self.clean_correct, self.n),
            robust_accuracy: ratio(self.robust_correct, self.n),
            success_rate: ratio(self.successes, self.clean_correct),
            mean_linf: if self.n == 0 {
                0.0
            } else {
                self.sum_linf / self.n as f64
            },
            max_linf: self.max_linf,
            mean_l2: if self.n == 0 {
                0.0
            } else {
                self.sum_l2 / self.n as f64
            },
            max_l2: self.max_l2,
        }
    }
}
