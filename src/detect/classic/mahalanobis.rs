//! Class-conditional Gaussians with a tied covariance (Lee et al. 2018, "A simple unified
//! framework for detecting out-of-distribution samples and adversarial attacks", eq. 1-2): the
//! confidence of a feature is max_c -(f - mu_c)' Sigma^-1 (f - mu_c) / 2.

use crate::{Error, Result};
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// Class means `[C, D]` and the precision `[D, D]` of the tied covariance.
pub struct ClassGaussian {
    means: Tensor,
    precision: Tensor,
}

impl ClassGaussian {
    /// Fits on features `[N, D]` with labels `[N]`: per-class means and the covariance of the
    /// class-centred features, (1/N) sum (x - mu_y)(x - mu_y)' (the maximum-likelihood estimate
    /// the authors' code takes from scikit-learn's EmpiricalCovariance). The precision is a
    /// pseudo-inverse: post-ReLU features have dead units, so the covariance is often singular.
    pub fn fit(features: &Tensor, labels: &Tensor, num_classes: i64) -> Result<Self> {
        if features.dim() != 2 || labels.size() != [features.size()[0]] {
            return Err(Error::Shape(format!(
                "Mahalanobis fit: features [N, D] and labels [N], got {:?} and {:?}",
                features.size(),
                labels.size()
            )));
        }
        let f = features.to_kind(Kind::Double);
        let l = labels.to_device(f.device());
        let mut means = Vec::new();
        let mut centred = Vec::new();
        for c in 0..num_classes {
            let idx = l.eq(c).nonzero().squeeze_dim(1);
            if idx.size()[0] == 0 {
                return Err(Error::invalid(format!(
                    "Mahalanobis fit: no training image of class {c} (fit on more images)"
                )));
            }
            let x = f.index_select(0, &idx);
            let mu = x.mean_dim(0, true, Kind::Double);
            centred.push(&x - &mu);
            means.push(mu);
        }
        let z = Tensor::cat(&centred, 0);
        let cov = z.transpose(0, 1).matmul(&z) / f.size()[0] as f64;
        let precision = cov.linalg_pinv(1e-10, true);
        Ok(ClassGaussian {
            means: Tensor::cat(&means, 0),
            precision,
        })
    }

    /// Squared Mahalanobis distances `[B, C]` of features `[B, D]` to every class mean.
    /// Differentiable in the features (the means and precision are constants).
    pub fn distances(&self, features: &Tensor) -> Tensor {
        let f = features.to_kind(Kind::Double);
        let d = f.unsqueeze(1) - self.means.to_device(f.device()).unsqueeze(0); // [B, C, D]
        let pd = d.matmul(&self.precision.to_device(f.device()));
        (pd * d).sum_dim_intlist(-1, false, Kind::Double)
    }

    /// The confidence max_c -d_c / 2 `[B]` (differentiable) and the closest class `[B]`.
    pub fn confidence(&self, features: &Tensor) -> (Tensor, Tensor) {
        let d = self.distances(features) * -0.5;
        d.max_dim(1, false)
    }

    pub fn to_tensors(&self) -> Vec<(String, Tensor)> {
        vec![
            ("means".into(), self.means.shallow_clone()),
            ("precision".into(), self.precision.shallow_clone()),
        ]
    }

    pub fn from_tensors(t: &HashMap<String, Tensor>) -> Result<Self> {
        let get = |n: &str| {
            t.get(n)
                .map(|x| x.to_kind(Kind::Double))
                .ok_or_else(|| Error::invalid(format!("Mahalanobis state: missing '{n}'")))
        };
        Ok(ClassGaussian {
            means: get("means")?,
            precision: get("precision")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_with_an_explicit_inverse() {
        let _rng = crate::rng_lock();
        // Class 0 at (0,0) +- (1,0), (0,2); class 1 at (4,4) +- the same offsets.
        let off = [[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]];
        let mut pts = Vec::new();
        let mut lab = Vec::new();
        for (c, m) in [(0i64, [0.0, 0.0]), (1, [4.0, 4.0])] {
            for o in off {
                pts.extend_from_slice(&[m[0] + o[0], m[1] + o[1]]);
                lab.push(c);
            }
        }
        let f = Tensor::from_slice(&pts).view([8, 2]);
        let g = ClassGaussian::fit(&f, &Tensor::from_slice(&lab), 2).unwrap();
        // Tied covariance by hand: diag(2/4, 8/4) = diag(0.5, 2); inverse by adj/det.
        let (a, b, c, d) = (0.5f64, 0.0f64, 0.0f64, 2.0f64);
        let det = a * d - b * c;
        let inv = [[d / det, -b / det], [-c / det, a / det]];
        let q = [1.0f64, 3.0];
        let maha = |m: [f64; 2]| {
            let v = [q[0] - m[0], q[1] - m[1]];
            v[0] * (inv[0][0] * v[0] + inv[0][1] * v[1])
                + v[1] * (inv[1][0] * v[0] + inv[1][1] * v[1])
        };
        let got: Vec<f64> =
            Vec::try_from(g.distances(&Tensor::from_slice(&q).view([1, 2])).view([-1])).unwrap();
        assert!((got[0] - maha([0.0, 0.0])).abs() < 1e-9);
        assert!((got[1] - maha([4.0, 4.0])).abs() < 1e-9);
        let (conf, cls) = g.confidence(&Tensor::from_slice(&q).view([1, 2]));
        let want = -0.5 * maha([0.0, 0.0]).min(maha([4.0, 4.0]));
        assert!((conf.double_value(&[0]) - want).abs() < 1e-9);
        assert_eq!(
            cls.int64_value(&[0]),
            if maha([0.0, 0.0]) < maha([4.0, 4.0]) {
                0
            } else {
                1
            }
        );
        let back = ClassGaussian::from_tensors(&g.to_tensors().into_iter().collect()).unwrap();
        assert!(back.distances(&f).equal(&g.distances(&f)));
        assert!(ClassGaussian::fit(&f, &Tensor::from_slice(&lab), 3).is_err());
    }
}
