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

/// The training features of every class and the bandwidth.
pub struct KernelDensity {
    bandwidth: f64,
    /// Per class `[n_c, D]` f64.
    classes: Vec<Tensor>,
}

/// Training points per distance chunk: bounds the `[B, chunk]` distance matrix.
const CHUNK: i64 = 4096;

impl KernelDensity {
    /// Stores the features `[N, D]` of each class (`labels` `[N]` in 0..num_classes).
    pub fn fit(features: &Tensor, labels: &Tensor, num_classes: i64, bandwidth: f64) -> Result<Self> {
        if !(bandwidth > 0.0 && bandwidth.is_finite()) {
            return Err(Error::invalid(format!(
                "KD bandwidth {bandwidth}: must be a positive number"
            )));
        }
        if features.dim() != 2 || labels.size() != [features.size()[0]] {
            return Err(Error::Shape(format!(
                "KD fit: features [N, D] and labels [N], got {:?} and {:?}",
                features.size(),
                labels.size()
            )));
        }
        let f = features.to_kind(Kind::Double);
        let l = labels.to_device(f.device());
        let mut classes = Vec::new();
        for c in 0..num_classes {
            let idx = l.eq(c).nonzero().squeeze_dim(1);
            if idx.size()[0] == 0 {
                return Err(Error::invalid(format!(
                    "KD fit: no training image of class {c} (fit on more images)"
                )));
            }
            classes.push(f.index_select(0, &idx));
        }
        Ok(KernelDensity { bandwidth, classes })
    }

    /// log p(x | class) under the KDE of each row's `class` `[B]`: as scikit-learn's
    /// `KernelDensity(kernel="gaussian").score_samples`, log mean_i N(x; x_i, h^2 I). `[B]` f64.
    pub fn log_density(&self, features: &Tensor, class: &Tensor) -> Result<Tensor> {
        let f = features.to_kind(Kind::Double);
        let (b, d) = (f.size()[0], f.size()[1]);
        let h2 = self.bandwidth * self.bandwidth;
        let norm = -0.5 * d as f64 * (2.0 * std::f64::consts::PI * h2).ln();
        let class: Vec<i64> = Vec::try_from(class.to_device(tch::Device::Cpu))?;
        let mut out = vec![0f64; b as usize];
        for (c, pts) in self.classes.iter().enumerate() {
            let rows: Vec<i64> = (0..b).filter(|&i| class[i as usize] == c as i64).collect();
            if rows.is_empty() {
                continue;
            }
            let idx = Tensor::from_slice(&rows).to_device(f.device());
            let x = f.index_select(0, &idx);
            let pts = pts.to_device(f.device());
            let n = pts.size()[0];
            // log-sum-exp over chunks of training points, combined exactly.
            let parts: Vec<Tensor> = (0..n)
                .step_by(CHUNK as usize)
                .map(|s| {
                    let p = pts.narrow(0, s, CHUNK.min(n - s));
                    let d2 = sq_dist(&x, &p);
                    (d2 / (-2.0 * h2)).logsumexp([1], false)
                })
                .collect();
            let lse = Tensor::stack(&parts, 1).logsumexp([1], false);
            let v: Vec<f64> = Vec::try_from((lse - (n as f64).ln() + norm).to_device(tch::Device::Cpu))?;
            for (r, val) in rows.iter().zip(v) {
                out[*r as usize] = val;
            }
        }
        Ok(Tensor::from_slice(&out))
    }

    pub fn to_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("bandwidth".to_string(), Tensor::from_slice(&[self.bandwidth]))];
        for (c, t) in self.classes.iter().enumerate() {
            v.push((format!("class{c}"), t.shallow_clone()));
        }
        v
    }

    pub fn from_tensors(t: &HashMap<String, Tensor>) -> Result<Self> {
        let get = |n: &str| {
            t.get(n)
                .map(|x| x.to_kind(Kind::Double))
                .ok_or_else(|| Error::invalid(format!("KD state: missing tensor '{n}'")))
        };
        let bandwidth = get("bandwidth")?.double_value(&[0]);
        let mut classes = Vec::new();
        while let Some(x) = t.get(&format!("class{}", classes.len())) {
            classes.push(x.to_kind(Kind::Double));
        }
        if classes.is_empty() {
            return Err(Error::invalid("KD state: no class features"));
        }
        Ok(KernelDensity { bandwidth, classes })
    }
}

/// Squared Euclidean distances `[B, N]` between rows, clamped at 0 against round-off.
pub fn sq_dist(a: &Tensor, b: &Tensor) -> Tensor {
    let aa = a.square().sum_dim_intlist(1, true, Kind::Double);
    let bb = b.square().sum_dim_intlist(1, true, Kind::Double).transpose(0, 1);
    (aa + bb - a.matmul(&b.transpose(0, 1)) * 2.0).clamp_min(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_density_is_the_direct_sum_of_kernels() {
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
            assert!((got[i as usize] - (sum / n).ln()).abs() < 1e-9, "{} vs {}", got[i as usize], (sum / n).ln());
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
            .log_density(&Tensor::from_slice(&[1.0f64]).view([1, 1]), &Tensor::from_slice(&[0i64]))
            .unwrap()
            .double_value(&[0]);
        assert!((v - (-0.5 - 0.5 * (2.0 * std::f64::consts::PI).ln())).abs() < 1e-12);
        // Round trip through tensors.
        let back = KernelDensity::from_tensors(&kd.to_tensors().into_iter().collect()).unwrap();
        assert!(back.log_density(&q, &qc).unwrap().equal(&kd.log_density(&q, &qc).unwrap()));
    }

    #[test]
    fn refuses_bad_settings() {
        let f = Tensor::zeros([2, 2], (Kind::Double, tch::Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 0]);
        assert!(KernelDensity::fit(&f, &y, 2, 1.0).is_err()); // class 1 empty
        assert!(KernelDensity::fit(&f, &y, 1, 0.0).is_err());
        assert!(KernelDensity::fit(&f, &y, 1, f64::NAN).is_err());
    }
}
