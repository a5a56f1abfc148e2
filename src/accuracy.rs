//! Evaluation of a DNN or a Bayes ensemble on a data set (docs/design.md sections 1 and 9): the
//! predictive is the softmax averaged over S Monte-Carlo samples from one parallel forward; metrics
//! (top-1/top-5, NLL, Brier, ECE with 15 bins) come from the reports crate, so there is one
//! implementation of each.

use crate::bayes::ForwardMode;
use crate::data::Dataset;
use crate::models::BayesModel;
use crate::{Error, Result};
use libre_reports::classification::ClassificationMetrics;
use serde::Serialize;
use tch::{Kind, Tensor};

/// What to evaluate.
#[derive(Debug, Clone, Serialize)]
pub struct EvalOptions {
    /// `Deterministic` (the means) or `ParallelMc { samples: S }`.
    pub mode: ForwardMode,
    pub batch_size: usize,
    /// Numbers of MC samples at which to report accuracy and NLL (each <= S); empty for none.
    pub curve: Vec<usize>,
    pub seed: i64,
}

impl EvalOptions {
    pub fn validate(&self) -> Result<()> {
        self.mode.validate()?;
        if self.batch_size == 0 {
            return Err(Error::param("batch_size", 0, "must be at least 1"));
        }
        let s = self.mode.samples();
        if let Some(bad) = self.curve.iter().find(|&&c| c == 0 || c > s) {
            return Err(Error::param(
                "curve",
                bad,
                format!("must lie in 1..={s} (the number of MC samples)"),
            ));
        }
        Ok(())
    }
}

/// Accuracy and NLL of the predictive built from the first `samples` MC samples.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CurvePoint {
    pub samples: usize,
    pub top1: f64,
    pub nll: f64,
}

#[derive(Debug, Serialize)]
pub struct EvalOutput {
    pub metrics: ClassificationMetrics,
    pub curve: Vec<CurvePoint>,
    pub seconds: f64,
    /// The predictive `[N, K]` (CPU, float32).
    #[serde(skip)]
    pub probs: Tensor,
}

/// Evaluate `model` on every labelled example of `ds`. `progress` gets the number of images done.
pub fn evaluate(
    model: &dyn BayesModel,
    ds: &Dataset,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<EvalOutput> {
    opts.validate()?;
    let k = model.config().num_classes as usize;
    let labels = ds.labels().ok_or_else(|| {
        Error::invalid(format!("{} has no labels: evaluation needs them", ds.name))
    })?;
    ds.check_labels(k)?;
    let start = std::time::Instant::now();
    tch::manual_seed(opts.seed);
    let keep_samples = !opts.curve.is_empty();
    let mut probs = Vec::new();
    let mut per_sample = Vec::new();
    let _g = tch::no_grad_guard();
    let mut done = 0;
    ds.for_each_batch(opts.batch_size, &mut |_, x, _| {
        let logits = model.forward_mc(&x, &opts.mode)?; // [B, S, K]
        let p = logits.softmax(-1, Kind::Float).to_device(tch::Device::Cpu); // [B, S, K]
        probs.push(p.mean_dim(1, false, Kind::Float)); // [B, K]
        if keep_samples {
            per_sample.push(p);
        }
        done += x.size()[0] as usize;
        progress(done);
        Ok(())
    })?;
    let probs = Tensor::cat(&probs, 0); // [N, K]
    let metrics = metrics_of(&probs, labels)?;
    let mut curve = Vec::new();
    if keep_samples {
        let all = Tensor::cat(&per_sample, 0); // [N, S, K]
        let y = Tensor::from_slice(labels);
        for &s in &opts.curve {
            let p = all.narrow(1, 0, s as i64).mean_dim(1, false, Kind::Float); // [N, K]
            let top1 = f64::try_from(
                p.argmax(-1, false)
                    .eq_tensor(&y)
                    .to_kind(Kind::Double)
                    .mean(Kind::Double),
            )?;
            let py = p
                .gather(1, &y.unsqueeze(1), false)
                .squeeze_dim(1)
                .to_kind(Kind::Double);
            // Same clamp as the reports crate's NLL, so the curve's last point equals the table.
            let nll = f64::try_from(-py.clamp_min(1e-12).log().mean(Kind::Double))?;
            curve.push(CurvePoint {
                samples: s,
                top1,
                nll,
            });
        }
    }
    Ok(EvalOutput {
        metrics,
        curve,
        seconds: start.elapsed().as_secs_f64(),
        probs,
    })
}

/// Classification metrics of a predictive `[N, K]` against labels.
pub fn metrics_of(probs: &Tensor, labels: &[i64]) -> Result<ClassificationMetrics> {
    let size = probs.size();
    let (n, k) = (size[0] as usize, size[1] as usize);
    let flat: Vec<f32> = Vec::<f32>::try_from(probs.to_kind(Kind::Float).contiguous().view([-1]))?;
    let view = ndarray::ArrayView2::from_shape((n, k), &flat)
        .map_err(|e| Error::Shape(format!("predictive [{n}, {k}]: {e}")))?;
    Ok(ClassificationMetrics::compute(view, labels)?)
}

/// Default curve points up to S: 1, 2, 5, 10, 20, 50, 100, ... and S itself.
pub fn default_curve(s: usize) -> Vec<usize> {
    let mut v: Vec<usize> = [1, 2, 5, 10, 20, 50, 100, 200, 500]
        .into_iter()
        .filter(|&c| c < s)
        .collect();
    v.push(s);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_points() {
        assert_eq!(default_curve(1), vec![1]);
        assert_eq!(default_curve(20), vec![1, 2, 5, 10, 20]);
        assert_eq!(default_curve(30), vec![1, 2, 5, 10, 20, 30]);
    }

    #[test]
    fn metrics_of_a_hand_made_predictive() {
        let p = Tensor::from_slice(&[0.9f32, 0.1, 0.2, 0.8, 0.6, 0.4]).view([3, 2]);
        let m = metrics_of(&p, &[0, 1, 1]).unwrap();
        assert!((m.top1 - 2.0 / 3.0).abs() < 1e-9);
        let nll = -(0.9f64.ln() + 0.8f64.ln() + 0.4f64.ln()) / 3.0;
        assert!((m.nll - nll).abs() < 1e-6, "{} vs {nll}", m.nll);
    }
}
