//! The logistic regression the classic detectors combine their features with (Feinman et al.:
//! density and BU; Ma et al.: per-layer LIDs; Lee et al.: per-layer confidences), on z-scored
//! features, fitted with linfa-logistic and reloaded from its parameters without it.

use crate::{Error, Result};
use linfa::prelude::*;
use ndarray::{Array1, Array2, Axis};

/// z-score parameters and the fitted coefficients; predicts P(adversarial).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogisticCombiner {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub coef: Vec<f64>,
    pub intercept: f64,
}

impl LogisticCombiner {
    /// Fits on features `[N, F]` with `adversarial[i]` the label of row i. A constant column
    /// gets std 1 (it carries no information; dividing by 0 would make it NaN).
    pub fn fit(x: Array2<f64>, adversarial: &[bool]) -> Result<Self> {
        if x.nrows() != adversarial.len() || x.nrows() == 0 {
            return Err(Error::Shape(format!(
                "logistic regression: {} rows and {} labels",
                x.nrows(),
                adversarial.len()
            )));
        }
        if adversarial.iter().all(|&a| a) || adversarial.iter().all(|&a| !a) {
            return Err(Error::invalid(
                "logistic regression needs both adversarial and clean examples",
            ));
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid(
                "logistic regression: non-finite feature values",
            ));
        }
        let mean = x.mean_axis(Axis(0)).expect("rows > 0");
        let std = x
            .std_axis(Axis(0), 0.0)
            .mapv(|s| if s > 0.0 { s } else { 1.0 });
        let z = (&x - &mean) / &std;
        let y = Array1::from_iter(adversarial.iter().copied());
        let fitted = linfa_logistic::LogisticRegression::default()
            .alpha(1.0)
            .max_iterations(200)
            .fit(&Dataset::new(z, y))
            .map_err(|e| Error::invalid(format!("logistic regression: {e}")))?;
        // linfa's coefficients predict the first label it met, whichever that is: orient them
        // so that the probability is that of "adversarial".
        let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
        Ok(LogisticCombiner {
            mean: mean.to_vec(),
            std: std.to_vec(),
            coef: fitted.params().iter().map(|c| sign * c).collect(),
            intercept: sign * fitted.intercept(),
        })
    }

    /// P(adversarial) per row of `[B, F]`, from the stored parameters alone.
    pub fn predict_proba(&self, x: &Array2<f64>) -> Array1<f64> {
        x.rows()
            .into_iter()
            .map(|r| {
                let t: f64 = r
                    .iter()
                    .enumerate()
                    .map(|(j, v)| (v - self.mean[j]) / self.std[j] * self.coef[j])
                    .sum::<f64>()
                    + self.intercept;
                1.0 / (1.0 + (-t).exp())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oriented_whatever_label_comes_first_or_dominates() {
        // Clean rows first and in the majority: P(adversarial) must still rise with feature 0.
        let (mut rows, mut y) = (Vec::new(), Vec::new());
        for i in 0..30 {
            let adv = i >= 20;
            rows.push(if adv {
                2.0 + i as f64 * 0.01
            } else {
                i as f64 * 0.01
            });
            y.push(adv);
        }
        let x = Array2::from_shape_vec((30, 1), rows).unwrap();
        let c = LogisticCombiner::fit(x.clone(), &y).unwrap();
        assert!(c.coef[0] > 0.0, "{c:?}");
        let p = c.predict_proba(&x);
        assert!(p[25] > 0.5 && p[5] < 0.5, "{p:?}");
    }

    #[test]
    fn separates_and_reloads() {
        // Feature 0 separates (adversarial high), feature 1 is constant noise-free.
        let n = 40;
        let mut rows = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let adv = i % 2 == 0;
            let v = if adv {
                3.0 + (i as f64) * 0.01
            } else {
                1.0 - (i as f64) * 0.01
            };
            rows.extend_from_slice(&[v, 5.0]);
            y.push(adv);
        }
        let x = Array2::from_shape_vec((n, 2), rows).unwrap();
        let c = LogisticCombiner::fit(x.clone(), &y).unwrap();
        assert_eq!(c.std[1], 1.0);
        let p = c.predict_proba(&x);
        let acc = p.iter().zip(&y).filter(|(p, &a)| (**p >= 0.5) == a).count();
        assert_eq!(acc, n);
        assert!(c.coef[0] > 0.0);
        // Reloaded from its parameters: bit-identical predictions.
        let back = LogisticCombiner {
            mean: c.mean.clone(),
            std: c.std.clone(),
            coef: c.coef.clone(),
            intercept: c.intercept,
        };
        assert_eq!(back.predict_proba(&x), p);
        assert!(LogisticCombiner::fit(x.clone(), &vec![true; n]).is_err());
        assert!(LogisticCombiner::fit(x, &y[..3]).is_err());
    }
}
