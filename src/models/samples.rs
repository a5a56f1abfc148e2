//! How a prediction is made, decided in one place for eval, attack, detect, calibrate, evaluate
//! and the evaluation inside training: how many MC samples a forward uses
//! ([`mc_sample_count`], the one rule) and the forward that gives them ([`mode_for`]).

use super::{BayesModel, PosteriorMeta};
use crate::bayes::{Family, ForwardMode};
use crate::{Error, Result};

/// The MC sample count of a forward: the one rule, from a built model ([`samples_for`]) or from
/// a checkpoint's metadata alone (an experiment plan, before any model is built).
///
/// - `arch`: the model's name in messages (its architecture, or a zoo name).
/// - `posterior`: the posterior the model carries; None for a deterministic network (DNN).
/// - `mc_dropout`: with MC dropout on, the count it defaults to (the dropout's own, or the one
///   a detector file was calibrated with); None without MC dropout.
/// - `requested`: the `mc_samples` setting; None for the default.
///
/// `Some(0)` is an error. With MC dropout: `requested`, else its default (any number of masks
/// can be drawn, whatever the posterior). A DNN gives 1 (asking for more is an error). A
/// posterior: `requested`, else its own S; an ensemble or low-rank posterior cannot give more
/// than its S members, a mean-field one draws any number.
pub fn mc_sample_count(
    arch: &str,
    posterior: Option<&PosteriorMeta>,
    mc_dropout: Option<usize>,
    requested: Option<usize>,
) -> Result<usize> {
    if requested == Some(0) {
        return Err(Error::param("mc_samples", 0, "must be at least 1"));
    }
    if let Some(default) = mc_dropout {
        return Ok(requested.unwrap_or(default));
    }
    match (posterior, requested) {
        (None, Some(s)) if s > 1 => Err(Error::param(
            "mc_samples",
            s,
            format!(
                "this {arch} is a deterministic network (no posterior), so it gives one \
                 prediction; convert or fine-tune it first for a Bayes ensemble"
            ),
        )),
        (None, _) => Ok(1),
        (Some(p), Some(s)) => {
            if p.config.family != Family::MeanField && s > p.config.samples {
                return Err(Error::param(
                    "mc_samples",
                    s,
                    format!(
                        "the {} posterior has only {} members",
                        p.config.family, p.config.samples
                    ),
                ));
            }
            Ok(s)
        }
        (Some(p), None) => Ok(p.config.samples),
    }
}

/// [`mc_sample_count`] for a built model: its posterior and its MC dropout's own count.
pub fn samples_for(model: &dyn BayesModel, requested: Option<usize>) -> Result<usize> {
    mc_sample_count(
        model.config().arch.name(),
        model.posterior(),
        model.mc_dropout().map(|d| d.samples),
        requested,
    )
}

/// The forward mode that gives `samples` predictions (deterministic for one sample of a DNN).
pub fn mode_for(model: &dyn BayesModel, samples: usize) -> ForwardMode {
    if model.posterior().is_none() && model.mc_dropout().is_none() {
        ForwardMode::Deterministic
    } else {
        ForwardMode::ParallelMc { samples }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bayes::PosteriorConfig;

    /// The rule's every branch, as each caller met it before it moved here.
    #[test]
    fn sample_count_rule() {
        let meta = |family, samples| PosteriorMeta {
            config: PosteriorConfig::new(family, samples),
            layers: vec!["fc".into()],
        };
        let (ens, mf) = (meta(Family::Ensemble, 4), meta(Family::MeanField, 4));
        let n = |p: Option<&PosteriorMeta>, d, r| mc_sample_count("lenet5", p, d, r).ok();
        assert_eq!(n(None, None, None), Some(1));
        assert_eq!(n(None, None, Some(1)), Some(1));
        assert_eq!(n(None, None, Some(2)), None);
        assert_eq!(n(Some(&ens), None, None), Some(4));
        assert_eq!(n(Some(&ens), None, Some(3)), Some(3));
        assert_eq!(n(Some(&ens), None, Some(5)), None);
        assert_eq!(n(Some(&mf), None, Some(50)), Some(50));
        // MC dropout draws any number of masks, with or without a posterior.
        assert_eq!(n(None, Some(6), None), Some(6));
        assert_eq!(n(Some(&ens), Some(6), Some(9)), Some(9));
        for (p, d) in [(None, None), (Some(&ens), None), (None, Some(6))] {
            let e = mc_sample_count("lenet5", p, d, Some(0)).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Param {
                        name: "mc_samples",
                        ..
                    }
                ),
                "{e}"
            );
        }
    }
}
