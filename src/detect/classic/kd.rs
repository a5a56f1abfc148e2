//! Gaussian kernel density of features per class (Feinman et al. 2017, "Detecting adversarial
//! samples from artifacts", section 3.1): adversarial examples land far from the training
//! manifold of the class they are assigned to, so their density there is low.

use crate::{Error, Result};
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// Feinman et al.'s bandwidths per data set (their section 4.1, tuned by grid search).
pub fn paper_bandwidth(dataset: &str) -> Option<f64> {
    match dataset {
        "mnist" => Some(1.20),
        "cifar10" | "cifar-10" => Some(0.26),
        "svhn" => Some(1.00),
        _ => None,
    }
}

/// The training features, their classes and the bandwidth.
pub struct KernelDensity {
    bandwidth: f64,
    /// `[N, D]` f64.
    points: Tensor,
    /// `[N]` int64.
    labels: Tensor,
    /// Training points per class, `[C]` f64.
    counts: Tensor,
}

/// Training points per distance chunk: bounds the `[B, chunk]` distance matrix.
const CHUNK: i64 = 8192;

impl KernelDensity {
    /// Stores the features `[N, D]` and `labels` `[N]` (in 0..num_classes) of the training images.
    pub fn fit(
        features: &Tensor,
        labels: &Tensor,
        num_classes: i64,
        bandwidth: f64,
    ) -> Result<Self> {
        if !(bandwidth > 0.0 && bandwidth.is_finite()) {
            return Err(Error::param(
                "bandwidth",
                bandwidth,
                "must be a positive number",
            ));
        }
        if features.dim() != 2 || labels.size() != [features.size()[0]] {
            return Err(Error::Shape(format!(
                "KD fit: features [N, D] and labels [N], got {:?} and {:?}",
                features.size(),
                labels.size()
            )));
        }
        let labels = labels.to_kind(Kind::Int64).to_device(features.device());
        let counts = labels
            .bincount::<Tensor>(None, num_classes)
            .to_kind(Kind::Double);
        let c: Vec<f64> = Vec::try_from(counts.to_device(tch::Device::Cpu))?;
        if let Some(k) = c.iter().position(|&n| n == 0.0) {
            return Err(Error::invalid(format!(
                "KD fit: no training image of class {k} (fit on more images)"
            )));
        }
        if c.len() as i64 != num_classes {
            return Err(Error::invalid(format!(
                "KD fit: labels outside 0..{num_classes}"
            )));
        }
        Ok(KernelDensity {
            bandwidth,
            points: features.to_kind(Kind::Double),
            labels,
            counts,
        })
    }

    /// log p(x | class) under the KDE of each row's `class` `[B]`: as scikit-learn's
    /// `KernelDensity(kernel="gaussian").score_samples`, log mean_i N(x; x_i, h^2 I) over the
    /// training points of that class. `[B]` f64, differentiable in the features (an adaptive
    /// attacker follows it): kernels of other classes are masked to -inf inside one
    /// log-sum-exp per chunk of training points, and the chunks combine exactly.
    pub fn log_density(&self, features: &Tensor, class: &Tensor) -> Result<Tensor> {
        let f = features.to_kind(Kind::Double);
        let dev = f.device();
        let d = f.size()[1];
        if d != self.points.size()[1] {
            return Err(Error::Shape(format!(
                "KD: features of {d} dims, fitted on {}",
                self.points.size()[1]
            )));
        }
        let h2 = self.bandwidth * self.bandwidth;
        let norm = -0.5 * d as f64 * (2.0 * std::f64::consts::PI * h2).ln();
        let class = class.to_kind(Kind::Int64).to_device(dev);
        let n = self.points.size()[0];
        let parts: Vec<Tensor> = (0..n)
            .step_by(CHUNK as usize)
            .map(|s| {
                let len = CHUNK.min(n - s);
                let p = self.points.narrow(0, s, len).to_device(dev);
                let same = self
                    .labels
                    .narrow(0, s, len)
                    .to_device(dev)
                    .unsqueeze(0)
                    .eq_tensor(&class.unsqueeze(1)); // [B, n]
                let k = sq_dist(&f, &p) / (-2.0 * h2);
                k.masked_fill(&same.logical_not(), f64::NEG_INFINITY)
                    .logsumexp([1], false)
            })
            .collect();
        let lse = Tensor::stack(&parts, 1).logsumexp([1], false);
        let counts = self.counts.to_device(dev).index_select(0, &class);
        Ok(lse - counts.log() + norm)
    }

    pub fn to_tensors(&self) -> Vec<(String, Tensor)> {
        vec![
            (
                "bandwidth".to_string(),
                Tensor::from_slice(&[self.bandwidth]),
            ),
            ("points".to_string(), self.points.shallow_clone()),
            ("labels".to_string(), self.labels.shallow_clone()),
            ("counts".to_string(), self.counts.shallow_clone()),
        ]
    }

    pub fn from_tensors(t: &HashMap<String, Tensor>) -> Result<Self> {
        let get = |n: &str| {
            t.get(n)
                .map(|x| x.shallow_clone())
                .ok_or_else(|| Error::invalid(format!("KD state: missing tensor '{n}'")))
        };
        Ok(KernelDensity {
            bandwidth: get("bandwidth")?.double_value(&[0]),
            points: get("points")?.to_kind(Kind::Double),
            labels: get("labels")?.to_kind(Kind::Int64),
            counts: get("counts")?.to_kind(Kind::Double),
        })
    }
}

/// Squared Euclidean distances `[B, N]` between rows, clamped at 0 against round-off.
pub fn sq_dist(a: &Tensor, b: &Tensor) -> Tensor {
    let aa = a.square().sum_dim_intlist(1, true, Kind::Double);
    let bb = b
        .square()
        .sum_dim_intlist(1, true, Kind::Double)
        .transpose(0, 1);
    (aa + bb - a.matmul(&b.transpose(0, 1)) * 2.0).clamp_min(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_density_is_the_direct_sum_of_kernels() {
        let _rng = crate::rng_lock();
        tch::manual_seed(0);
        let f = Tensor::randn([9, 3], (Kind::Double, tch::Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 0, 1, 0, 1, 1, 0, 1]);
        let h = 0.7;
        let kd = KernelDensity::fit(&f, &y, 2, h).unwrap();
        let q = Tensor::randn([4, 3], (Kind::Double, tch::Device::Cpu));
        let qc = Tensor::from_slice(&[1i64, 0, 0, 1]);
        let got: Vec<f64> = Vec::try_from(kd.log_density(&q, &qc).unwrap()).unwrap();
        let fv: Vec<Vec<f64>> = (0..9).map(|i| Vec::try_from(f.get(i)).unwrap()).collect();
        let yv: Vec<i64> = Vec::try_from(&y).unwrap();
        for i in 0..4 {
            let x: Vec<f64> = Vec::try_from(q.get(i)).unwrap();
            let c = i64::try_from(qc.get(i)).unwrap();
            let (mut sum, mut n) = (0.0, 0.0);
            for j in 0..9 {
                if yv[j] != c {
                    continue;
                }
                let d2: f64 = (0..3).map(|k| (x[k] - fv[j][k]).powi(2)).sum();
                let norm = (2.0 * std::f64::consts::PI * h * h).powf(-1.5);
                sum += norm * (-d2 / (2.0 * h * h)).exp();
                n += 1.0;
            }
            assert!(
                (got[i as usize] - (sum / n).ln()).abs() < 1e-9,
                "{} vs {}",
                got[i as usize],
                (sum / n).ln()
            );
        }
        // 1-D by hand: points {0, 2}, h = 1, x = 1: log(N(1; 0, 1)) = -0.5 - 0.5 ln(2 pi).
        let kd1 = KernelDensity::fit(
            &Tensor::from_slice(&[0.0f64, 2.0]).view([2, 1]),
            &Tensor::from_slice(&[0i64, 0]),
            1,
            1.0,
        )
        .unwrap();
        let v = kd1
            .log_density(
                &Tensor::from_slice(&[1.0f64]).view([1, 1]),
                &Tensor::from_slice(&[0i64]),
            )
            .unwrap()
            .double_value(&[0]);
        assert!((v - (-0.5 - 0.5 * (2.0 * std::f64::consts::PI).ln())).abs() < 1e-12);
        // Round trip through tensors.
        let back = KernelDensity::from_tensors(&kd.to_tensors().into_iter().collect()).unwrap();
        assert!(back
            .log_density(&q, &qc)
            .unwrap()
            .equal(&kd.log_density(&q, &qc).unwrap()));
    }

    #[test]
    fn differentiable_in_the_features() {
        let _rng = crate::rng_lock();
        tch::manual_seed(1);
        let f = Tensor::randn([6, 2], (Kind::Double, tch::Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 0, 0, 1, 1, 1]);
        let kd = KernelDensity::fit(&f, &y, 2, 0.5).unwrap();
        let q = Tensor::randn([3, 2], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
        let c = Tensor::from_slice(&[0i64, 1, 0]);
        let v = kd.log_density(&q, &c).unwrap();
        let g = Tensor::run_backward(&[v.sum(Kind::Double)], &[&q], false, false);
        // Against a central finite difference of the first coordinate of row 0.
        let e = 1e-6;
        let bump = |d: f64| {
            let q2 = q.detach().copy();
            let _ = q2.get(0).get(0).fill_(q.double_value(&[0, 0]) + d);
            kd.log_density(&q2, &c).unwrap().double_value(&[0])
        };
        let fd = (bump(e) - bump(-e)) / (2.0 * e);
        assert!((g[0].double_value(&[0, 0]) - fd).abs() < 1e-5, "{fd}");
    }

    #[test]
    fn refuses_bad_settings() {
        let _rng = crate::rng_lock();
        let f = Tensor::zeros([2, 2], (Kind::Double, tch::Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 0]);
        assert!(KernelDensity::fit(&f, &y, 2, 1.0).is_err()); // class 1 empty
        assert!(KernelDensity::fit(&f, &y, 1, 0.0).is_err());
        assert!(KernelDensity::fit(&f, &y, 1, f64::NAN).is_err());
    }
}
