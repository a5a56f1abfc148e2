//! Uncertainty scores from one forward (docs/detection.md, "Scores"). Higher = more suspicious.
//!
//! Every score is computed from the same `[B, S, K]` logits and `[B, S, ...]` block features a
//! parallel MC forward returns, so asking for several scores costs one forward.
//!
//! | score | definition | needs |
//! |---|---|---|
//! | `feature-variance` | unbiased variance over S of the Bayesian block's output, averaged over its dims (LiBRe, Deng et al. 2021, eq. 6) | S >= 2 |
//! | `softmax-variance` | unbiased variance over S of the softmax, averaged over the K classes | S >= 2 |
//! | `mutual-information` | H(mean_s p_s) - mean_s H(p_s) (the epistemic part of the entropy) | S >= 2 |
//! | `entropy` | H(mean_s p_s), the predictive entropy | any model |
//! | `msp` | 1 - max_k mean_s p_s (Hendrycks & Gimpel 2017) | any model |
//! | `max-logit` | - max_k mean_s logits (Hendrycks et al. 2022) | any model |
//!
//! The classic detectors' scores (`kd`, `kd-bu`, `lid`, `mahalanobis`; [`super::classic`]; the
//! input-transformation detectors' `squeeze`, `magnet`, `magnet-l1`, `magnet-l2`,
//! `magnet-jsd10`, `magnet-jsd40`; [`super::transform`]) are
//! named here too, so every command takes them, but only a detector file fitted for them gives
//! them ([`super::Detector::check_score`]).

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// A detection score. Higher = more suspicious.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Score {
    FeatureVariance,
    SoftmaxVariance,
    MutualInformation,
    Entropy,
    Msp,
    MaxLogit,
    Kd,
    KdBu,
    Lid,
    Mahalanobis,
    Squeeze,
    Magnet,
    MagnetL1,
    MagnetL2,
    MagnetJsd10,
    MagnetJsd40,
}

impl Score {
    pub const ALL: [Score; 16] = [
        Score::FeatureVariance,
        Score::SoftmaxVariance,
        Score::MutualInformation,
        Score::Entropy,
        Score::Msp,
        Score::MaxLogit,
        Score::Kd,
        Score::KdBu,
        Score::Lid,
        Score::Mahalanobis,
        Score::Squeeze,
        Score::Magnet,
        Score::MagnetL1,
        Score::MagnetL2,
        Score::MagnetJsd10,
        Score::MagnetJsd40,
    ];

    /// Whether the score is positive by construction (variances, mutual information, entropy),
    /// so that its logarithm is defined (the log-score mimicry attack).
    pub fn is_positive(self) -> bool {
        matches!(
            self,
            Score::FeatureVariance
                | Score::SoftmaxVariance
                | Score::MutualInformation
                | Score::Entropy
        )
    }

    /// The classic detector a score belongs to (None: an uncertainty score of the forward).
    pub fn classic(self) -> Option<super::classic::ClassicKind> {
        use super::classic::ClassicKind as C;
        match self {
            Score::Kd => Some(C::Kd),
            Score::KdBu => Some(C::KdBu),
            Score::Lid => Some(C::Lid),
            Score::Mahalanobis => Some(C::Mahalanobis),
            Score::Squeeze => Some(C::Squeeze),
            Score::Magnet
            | Score::MagnetL1
            | Score::MagnetL2
            | Score::MagnetJsd10
            | Score::MagnetJsd40 => Some(C::Magnet),
            _ => None,
        }
    }

    /// The score of a classic detector.
    pub fn of_classic(k: super::classic::ClassicKind) -> Score {
        Score::ALL
            .into_iter()
            .find(|s| s.classic() == Some(k))
            .expect("every kind has a score")
    }

    pub fn name(self) -> &'static str {
        match self {
            Score::FeatureVariance => "feature-variance",
            Score::SoftmaxVariance => "softmax-variance",
            Score::MutualInformation => "mutual-information",
            Score::Entropy => "entropy",
            Score::Msp => "msp",
            Score::MaxLogit => "max-logit",
            Score::Kd => "kd",
            Score::KdBu => "kd-bu",
            Score::Lid => "lid",
            Score::Mahalanobis => "mahalanobis",
            Score::Squeeze => "squeeze",
            Score::Magnet => "magnet",
            Score::MagnetL1 => "magnet-l1",
            Score::MagnetL2 => "magnet-l2",
            Score::MagnetJsd10 => "magnet-jsd10",
            Score::MagnetJsd40 => "magnet-jsd40",
        }
    }

    /// Whether the score is a spread over MC samples (meaningless for a single sample).
    pub fn needs_samples(self) -> bool {
        matches!(
            self,
            Score::FeatureVariance | Score::SoftmaxVariance | Score::MutualInformation
        )
    }

    /// The scores a model with `samples` MC samples can give (S = 1: a DNN).
    pub fn available(samples: usize) -> Vec<Score> {
        Score::ALL
            .into_iter()
            .filter(|s| s.classic().is_none() && (samples >= 2 || !s.needs_samples()))
            .collect()
    }

    /// The default detection score: LiBRe's feature variance for a Bayesian model, msp for a DNN.
    pub fn default_for(samples: usize) -> Score {
        if samples >= 2 {
            Score::FeatureVariance
        } else {
            Score::Msp
        }
    }

    /// Errors (naming the score) unless a model with `samples` MC samples can give it.
    pub fn check_available(self, samples: usize) -> Result<()> {
        if let Some(k) = self.classic() {
            return Err(Error::invalid(format!(
                "score '{}' comes from a fitted {} detector: make one with `libre calibrate` \
                 (detector {}) and pass that file as the weights",
                self.name(),
                k.name(),
                k.name()
            )));
        }
        if self.needs_samples() && samples < 2 {
            return Err(Error::invalid(format!(
                "score '{}' is a spread over MC samples and needs a Bayesian model with at least \
                 2 samples (this model gives {samples}); a DNN can use {}",
                self.name(),
                Score::available(1)
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(())
    }
}

impl std::fmt::Display for Score {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Score {
    type Err = Error;
    fn from_str(s: &str) -> Result<Score> {
        Score::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown score '{s}': available {}",
                    Score::ALL.map(|x| x.name()).join(", ")
                ))
            })
    }
}

/// Parses a comma list of scores (`feature-variance,msp`), rejecting duplicates.
pub fn parse_list(s: &str) -> Result<Vec<Score>> {
    let mut out: Vec<Score> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let sc: Score = part.parse()?;
        if out.contains(&sc) {
            return Err(Error::invalid(format!("score '{part}' given twice")));
        }
        out.push(sc);
    }
    if out.is_empty() {
        return Err(Error::invalid("no score given"));
    }
    Ok(out)
}

/// The prediction of the MC-averaged predictive.
#[derive(Debug)]
pub struct Prediction {
    /// `[B]` int64.
    pub class: Tensor,
    /// `[B]` float: max_k mean_s p_s.
    pub confidence: Tensor,
    /// `[B, K]` float: mean_s p_s.
    pub probs: Tensor,
}

/// Entropy along the last dim: `[..., K]` -> `[...]`.
fn entropy(p: &Tensor) -> Tensor {
    -(p * p.clamp_min(1e-12).log()).sum_dim_intlist(-1, false, Kind::Float)
}

/// Unbiased variance over the sample axis: `[B, S, N]` -> `[B, N]` float.
///
/// Two passes (mean, then squared deviations) in f64: libtorch's `var_dim` over a middle axis
/// runs a Welford reduction element by element, 12 ms for LiBRe LeNet5's [256, 20, 200]
/// features against 2 ms here, and f64 keeps the result equal to it after rounding to f32
/// (checked in the tests).
fn var_over_samples(x: &Tensor) -> Tensor {
    let s = x.size()[1];
    let d = x.to_kind(Kind::Double);
    let centred = &d - d.mean_dim(1, true, Kind::Double);
    (centred.square().sum_dim_intlist(1, false, Kind::Double) / (s - 1) as f64).to_kind(Kind::Float)
}

/// The prediction and the requested scores from one forward's outputs.
///
/// # Shapes
/// `logits`: `[B, S, K]`; `features`: `[B, S, ...]` (only read by feature-variance) -> the
/// prediction and one `[B]` float tensor per score, in the order asked.
pub fn compute(
    logits: &Tensor,
    features: &Tensor,
    scores: &[Score],
) -> Result<(Prediction, Vec<Tensor>)> {
    let size = logits.size();
    if size.len() != 3 {
        return Err(Error::Shape(format!(
            "scores: logits must be [B, S, K], got {size:?}"
        )));
    }
    let (b, s) = (size[0], size[1]);
    for sc in scores {
        sc.check_available(s as usize)?;
    }
    let logits = logits.to_kind(Kind::Float);
    let probs = logits.softmax(-1, Kind::Float); // [B, S, K]
    let mean_p = probs.mean_dim(1, false, Kind::Float); // [B, K]
    let (confidence, class) = mean_p.max_dim(-1, false);
    let mut out = Vec::with_capacity(scores.len());
    for sc in scores {
        let t = match sc {
            Score::FeatureVariance => {
                let f = features.reshape([b, s, -1]); // [B, S, F]
                var_over_samples(&f).mean_dim(1, false, Kind::Float)
            }
            Score::SoftmaxVariance => var_over_samples(&probs).mean_dim(1, false, Kind::Float),
            Score::MutualInformation => {
                // >= 0 in exact arithmetic; clamp the float round-off below zero.
                (entropy(&mean_p) - entropy(&probs).mean_dim(1, false, Kind::Float)).clamp_min(0.0)
            }
            Score::Entropy => entropy(&mean_p),
            Score::Msp => 1.0 - &confidence,
            Score::MaxLogit => -logits.mean_dim(1, false, Kind::Float).amax(-1, false),
            Score::Kd
            | Score::KdBu
            | Score::Lid
            | Score::Mahalanobis
            | Score::Squeeze
            | Score::Magnet
            | Score::MagnetL1
            | Score::MagnetL2
            | Score::MagnetJsd10
            | Score::MagnetJsd40 => {
                unreachable!("check_available refuses classic scores")
            }
        };
        out.push(t);
    }
    Ok((
        Prediction {
            class,
            confidence,
            probs: mean_p,
        },
        out,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }
    fn scalar(x: &Tensor, i: i64) -> f64 {
        x.double_value(&[i])
    }

    #[test]
    fn feature_variance_is_the_unbiased_variance_averaged_over_dims() {
        // One image, S = 3, two feature dims: [1, 4], [2, 4], [6, 4].
        let f = t(&[1.0, 4.0, 2.0, 4.0, 6.0, 4.0], &[1, 3, 2]);
        let logits = Tensor::zeros([1, 3, 2], (Kind::Float, tch::Device::Cpu));
        let (_, s) = compute(&logits, &f, &[Score::FeatureVariance]).unwrap();
        // dim 0: mean 3, squares 4 + 1 + 9 = 14, / (3 - 1) = 7; dim 1: 0 -> mean 3.5.
        assert!((scalar(&s[0], 0) - 3.5).abs() < 1e-6);
    }

    #[test]
    fn probability_scores_match_closed_forms() {
        // S = 2 members with softmax [1, 0] and [0, 1] (large logits), K = 2.
        let l = t(&[30.0, 0.0, 0.0, 30.0], &[1, 2, 2]);
        let f = Tensor::zeros([1, 2, 1], (Kind::Float, tch::Device::Cpu));
        let all = [
            Score::SoftmaxVariance,
            Score::MutualInformation,
            Score::Entropy,
            Score::Msp,
            Score::MaxLogit,
        ];
        let (pred, s) = compute(&l, &f, &all).unwrap();
        let ln2 = 2f64.ln();
        // var of {1, 0} unbiased = 0.5 for both classes.
        assert!((scalar(&s[0], 0) - 0.5).abs() < 1e-5);
        assert!((scalar(&s[1], 0) - ln2).abs() < 1e-5, "MI = ln 2");
        assert!((scalar(&s[2], 0) - ln2).abs() < 1e-5, "H(0.5, 0.5) = ln 2");
        assert!((scalar(&s[3], 0) - 0.5).abs() < 1e-5);
        assert!(
            (scalar(&s[4], 0) + 15.0).abs() < 1e-5,
            "mean logits (15, 15)"
        );
        assert!((pred.confidence.double_value(&[0]) - 0.5).abs() < 1e-5);

        // Agreeing members: no epistemic part, entropy of p = (0.8, 0.2).
        let p = [0.8f64, 0.2];
        let z = (p[0] / p[1]).ln() as f32;
        let l = t(&[z, 0.0, z, 0.0], &[1, 2, 2]);
        let (pred, s) = compute(&l, &f, &all).unwrap();
        let h = -(p[0] * p[0].ln() + p[1] * p[1].ln());
        assert!(scalar(&s[0], 0).abs() < 1e-6);
        assert!(scalar(&s[1], 0).abs() < 1e-6);
        assert!((scalar(&s[2], 0) - h).abs() < 1e-5);
        assert!((scalar(&s[3], 0) - 0.2).abs() < 1e-5);
        assert_eq!(pred.class.int64_value(&[0]), 0);
    }

    /// The two-pass f64 variance equals libtorch's Welford `var_dim` (rounded to f32) on
    /// features of very different scales, and is exactly 0 where every sample agrees.
    #[test]
    fn sample_variance_equals_var_dim() {
        let _rng = crate::rng_lock();
        tch::manual_seed(0);
        let opts = (Kind::Float, tch::Device::Cpu);
        for scale in [1e-3, 1.0, 1e4] {
            let x = (Tensor::randn([64, 20, 50], opts) * scale + 3.0 * scale).relu();
            let want = x.var_dim(1, true, false);
            let got = var_over_samples(&x);
            let rel = ((&got - &want).abs() / want.abs().clamp_min(1e-30)).max();
            assert!(rel.double_value(&[]) < 1e-6, "scale {scale}: {rel}");
            let equal = got.eq_tensor(&want).sum(Kind::Int64).int64_value(&[]);
            assert!(
                equal as f64 >= 0.99 * want.numel() as f64,
                "{equal} of {} equal",
                want.numel()
            );
        }
        let same = Tensor::full([2, 20, 3], 0.1, opts);
        assert_eq!(var_over_samples(&same).abs().max().double_value(&[]), 0.0);
    }

    #[test]
    fn sample_scores_refuse_a_single_sample() {
        let l = Tensor::zeros([2, 1, 3], (Kind::Float, tch::Device::Cpu));
        let f = Tensor::zeros([2, 1, 4], (Kind::Float, tch::Device::Cpu));
        let e = compute(&l, &f, &[Score::FeatureVariance])
            .unwrap_err()
            .to_string();
        assert!(e.contains("feature-variance") && e.contains("msp"), "{e}");
        assert!(compute(&l, &f, &[Score::Msp, Score::Entropy]).is_ok());
    }

    #[test]
    fn parses_score_lists() {
        assert_eq!(
            parse_list("feature-variance, msp").unwrap(),
            vec![Score::FeatureVariance, Score::Msp]
        );
        assert!(parse_list("msp,msp").is_err());
        assert!(parse_list("bogus")
            .unwrap_err()
            .to_string()
            .contains("bogus"));
        for s in Score::ALL {
            assert_eq!(s.name().parse::<Score>().unwrap(), s);
        }
    }
}
