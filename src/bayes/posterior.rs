//! Posterior families for one learnable tensor (docs/design.md section 2, the table of families).
//!
//! A [`BayesParam`] is one named tensor of a layer (`layer4.2.conv1.weight`) in one of four
//! states: point, mean-field Gaussian (`sigma = exp(psi)`, not softplus), ensemble (S member
//! copies) or low-rank multiplicative (`w_s = mu * (A_s B_s)`). Its tensors are variables of the
//! model's `nn::VarStore` under the parameter name plus a suffix (`_psi`, `_members`, `_lr_a`,
//! `_lr_b`), so conversion edits the VarStore in place.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

/// A posterior family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    Point,
    MeanField,
    Ensemble,
    LowRank,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::Point => "point",
            Family::MeanField => "mean-field",
            Family::Ensemble => "ensemble",
            Family::LowRank => "low-rank",
        })
    }
}

impl std::str::FromStr for Family {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "point" | "deterministic" => Ok(Family::Point),
            "mean-field" | "meanfield" | "mf" => Ok(Family::MeanField),
            "ensemble" | "fade" => Ok(Family::Ensemble),
            "low-rank" | "lowrank" => Ok(Family::LowRank),
            _ => Err(Error::invalid(format!(
                "unknown posterior family '{s}': expected mean-field, ensemble or low-rank"
            ))),
        }
    }
}

/// How to convert: the family and its options. Serialised into checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PosteriorConfig {
    pub family: Family,
    /// Ensemble members / low-rank components; the default MC sample count for mean-field.
    pub samples: usize,
    /// psi ~ U(lo, hi) at conversion (mean-field).
    pub psi_init: (f64, f64),
    /// Rank r of the low-rank factors.
    pub rank: usize,
    /// Prior std `sp` of the multiplicative low-rank noise (docs/design.md section 2: 0.2).
    pub low_rank_sp: f64,
}

impl Default for PosteriorConfig {
    fn default() -> Self {
        PosteriorConfig {
            family: Family::MeanField,
            samples: 20,
            psi_init: (-6.0, -5.0),
            rank: 1,
            low_rank_sp: 0.2,
        }
    }
}

impl PosteriorConfig {
    pub fn new(family: Family, samples: usize) -> Self {
        PosteriorConfig {
            family,
            samples,
            ..Default::default()
        }
    }

    /// Checks the constraints (S >= 1, psi range ordered, rank >= 1).
    pub fn validate(&self) -> Result<()> {
        if self.samples < 1 {
            return Err(Error::param(
                "samples",
                self.samples,
                "the posterior's sample count S must be >= 1",
            ));
        }
        if self.psi_init.0.is_nan() || self.psi_init.1.is_nan() || self.psi_init.0 > self.psi_init.1
        {
            return Err(Error::invalid(format!(
                "psi init range ({}, {}) must have lo <= hi",
                self.psi_init.0, self.psi_init.1
            )));
        }
        if self.rank < 1 || self.low_rank_sp.is_nan() || self.low_rank_sp <= 0.0 {
            return Err(Error::invalid(format!(
                "low-rank rank {} must be >= 1 and sp {} > 0",
                self.rank, self.low_rank_sp
            )));
        }
        Ok(())
    }
}

/// Which optimiser group a VarStore variable belongs to, decided by its name's suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParamGroup {
    /// Point parameters and posterior means (`weight`, `bias`).
    Mean,
    /// Mean-field log standard deviations (`*_psi`).
    Psi,
    /// Ensemble members (`*_members`).
    Members,
    /// Low-rank factors (`*_lr_a`, `*_lr_b`).
    LowRank,
}

impl ParamGroup {
    pub const ALL: [ParamGroup; 4] = [
        ParamGroup::Mean,
        ParamGroup::Psi,
        ParamGroup::Members,
        ParamGroup::LowRank,
    ];

    pub fn of_name(name: &str) -> ParamGroup {
        if name.ends_with(SUFFIX_PSI) {
            ParamGroup::Psi
        } else if name.ends_with(SUFFIX_MEMBERS) {
            ParamGroup::Members
        } else if name.ends_with(SUFFIX_LR_A) || name.ends_with(SUFFIX_LR_B) {
            ParamGroup::LowRank
        } else {
            ParamGroup::Mean
        }
    }
}

pub const SUFFIX_PSI: &str = "_psi";
pub const SUFFIX_MEMBERS: &str = "_members";
pub const SUFFIX_LR_A: &str = "_lr_a";
pub const SUFFIX_LR_B: &str = "_lr_b";

/// The tensors of one parameter in its current family.
#[derive(Debug)]
pub enum ParamState {
    Point(Tensor),
    MeanField {
        mu: Tensor,
        psi: Tensor,
    },
    /// `[S, ...]`
    Ensemble {
        members: Tensor,
    },
    /// `a: [S, out, r]`, `b: [S, r, numel/out]`
    LowRank {
        mu: Tensor,
        a: Tensor,
        b: Tensor,
    },
}

/// One learnable tensor of a layer with its posterior.
#[derive(Debug)]
pub struct BayesParam {
    name: String,
    state: ParamState,
}

/// Adds a variable under a dotted full name (tch's `Path::sub` rejects dots).
pub(crate) fn vs_add(vs: &nn::VarStore, full: &str, t: Tensor, trainable: bool) -> Tensor {
    let mut p = vs.root();
    let mut parts: Vec<&str> = full.split('.').collect();
    let last = parts.pop().unwrap_or(full);
    for part in parts {
        p = p.sub(part);
    }
    p.add(last, t, trainable)
}

/// Removes a variable from the VarStore (named map and trainable list).
pub(crate) fn vs_remove(vs: &nn::VarStore, full: &str) {
    let mut vars = vs.variables_.lock().unwrap();
    if let Some(t) = vars.named_variables.remove(full) {
        let ptr = t.data_ptr();
        vars.trainable_variables
            .retain(|v| v.tensor.data_ptr() != ptr);
    }
}

impl BayesParam {
    /// Wraps a point tensor already registered in the VarStore under `name`.
    pub fn point(name: impl Into<String>, t: Tensor) -> Self {
        BayesParam {
            name: name.into(),
            state: ParamState::Point(t),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn state(&self) -> &ParamState {
        &self.state
    }

    pub fn family(&self) -> Family {
        match self.state {
            ParamState::Point(_) => Family::Point,
            ParamState::MeanField { .. } => Family::MeanField,
            ParamState::Ensemble { .. } => Family::Ensemble,
            ParamState::LowRank { .. } => Family::LowRank,
        }
    }

    pub fn is_point(&self) -> bool {
        matches!(self.state, ParamState::Point(_))
    }

    /// The shape of one weight sample.
    pub fn shape(&self) -> Vec<i64> {
        match &self.state {
            ParamState::Point(t) | ParamState::MeanField { mu: t, .. } => t.size(),
            ParamState::LowRank { mu, .. } => mu.size(),
            ParamState::Ensemble { members } => members.size()[1..].to_vec(),
        }
    }

    /// Number of members / components for ensemble and low-rank, None otherwise.
    pub fn components(&self) -> Option<i64> {
        match &self.state {
            ParamState::Ensemble { members } => Some(members.size()[0]),
            ParamState::LowRank { a, .. } => Some(a.size()[0]),
            _ => None,
        }
    }

    /// The deterministic tensor: the point value, the mean, or the member average.
    pub fn mean(&self) -> Tensor {
        match &self.state {
            ParamState::Point(t) => t.shallow_clone(),
            ParamState::MeanField { mu, .. } | ParamState::LowRank { mu, .. } => mu.shallow_clone(),
            ParamState::Ensemble { members } => members.mean_dim(0, false, members.kind()),
        }
    }

    /// Low-rank effective weights of components `idx` (`[n]`): `[n, ...]`.
    fn low_rank_weights(mu: &Tensor, a: &Tensor, b: &Tensor, idx: Option<&Tensor>) -> Tensor {
        let (a, b) = match idx {
            Some(i) => (a.index_select(0, i), b.index_select(0, i)),
            None => (a.shallow_clone(), b.shallow_clone()),
        };
        let m = a.bmm(&b); // [n, out, numel/out]
        let mut shape = vec![m.size()[0]];
        shape.extend(mu.size());
        mu.unsqueeze(0) * m.reshape(&shape)
    }

    /// Draws `n` weight samples `[n, ...]`.
    ///
    /// Mean-field: fresh Gaussian noise. Ensemble / low-rank: the first `n` members / components
    /// (an error when `n` exceeds their number). Point: the value broadcast (a view, no copy).
    pub fn draw(&self, n: i64) -> Result<Tensor> {
        Ok(match &self.state {
            ParamState::Point(t) => {
                let mut shape = vec![n];
                shape.extend(t.size());
                t.unsqueeze(0).expand(&shape, false)
            }
            ParamState::MeanField { mu, psi } => {
                let mut shape = vec![n];
                shape.extend(mu.size());
                let mut eps = crate::runtime::precision::randn(&shape, mu);
                let sigma = psi.exp().unsqueeze(0);
                if sigma.requires_grad() {
                    mu.unsqueeze(0) + sigma * eps
                } else {
                    // Outside autograd (evaluation, detection) in place: the same numbers without
                    // two more S-fold temporaries (drawing ResNet-50's last block 20 times is
                    // memory-bound).
                    let _ = eps.g_mul_(&sigma).g_add_(&mu.unsqueeze(0));
                    eps
                }
            }
            ParamState::Ensemble { members } => {
                let s = members.size()[0];
                self.check_components(n, s)?;
                if n == s {
                    members.shallow_clone()
                } else {
                    members.narrow(0, 0, n)
                }
            }
            ParamState::LowRank { mu, a, b } => {
                let s = a.size()[0];
                self.check_components(n, s)?;
                let idx = Tensor::arange(n, (Kind::Int64, mu.device()));
                Self::low_rank_weights(mu, a, b, Some(&idx))
            }
        })
    }

    fn check_components(&self, n: i64, s: i64) -> Result<()> {
        if n > s {
            return Err(Error::param(
                "mc_samples",
                n,
                format!(
                    "{}: the {} posterior has only {s} members; use at most {s}",
                    self.name,
                    self.family()
                ),
            ));
        }
        Ok(())
    }

    /// One weight per example, `[B, ...]`: mean-field draws B samples, ensemble / low-rank take
    /// the components given by `ids` (`[B]`, int64).
    pub fn draw_routed(&self, ids: &Tensor) -> Result<Tensor> {
        let b = ids.size()[0];
        Ok(match &self.state {
            ParamState::Point(_) | ParamState::MeanField { .. } => self.draw(b)?,
            ParamState::Ensemble { members } => members.index_select(0, ids),
            ParamState::LowRank { mu, a, b: bb } => Self::low_rank_weights(mu, a, bb, Some(ids)),
        })
    }

    /// Mean-field `(mu, sigma)`, for local reparameterisation and flipout.
    pub fn gaussian(&self) -> Option<(Tensor, Tensor)> {
        match &self.state {
            ParamState::MeanField { mu, psi } => Some((mu.shallow_clone(), psi.exp())),
            _ => None,
        }
    }

    /// Converts a point parameter in place; the VarStore gains the suffixed extras.
    pub fn convert(&mut self, vs: &nn::VarStore, cfg: &PosteriorConfig) -> Result<()> {
        cfg.validate()?;
        let t = match &self.state {
            ParamState::Point(t) => t.shallow_clone(),
            _ => {
                return Err(Error::invalid(format!(
                    "{} is already {}: convert it back to deterministic first",
                    self.name,
                    self.family()
                )))
            }
        };
        let s = cfg.samples as i64;
        let name = self.name.clone();
        let _guard = tch::no_grad_guard();
        self.state = match cfg.family {
            Family::Point => return Ok(()),
            Family::MeanField => {
                let psi = Tensor::empty(t.size(), (t.kind(), t.device()))
                    .uniform_(cfg.psi_init.0, cfg.psi_init.1);
                let psi = vs_add(vs, &format!("{name}{SUFFIX_PSI}"), psi, true);
                ParamState::MeanField { mu: t, psi }
            }
            Family::Ensemble => {
                let mut reps = vec![s];
                reps.extend(std::iter::repeat_n(1, t.dim()));
                let members = t.detach().unsqueeze(0).repeat(&reps);
                vs_remove(vs, &name);
                let members = vs_add(vs, &format!("{name}{SUFFIX_MEMBERS}"), members, true);
                ParamState::Ensemble { members }
            }
            Family::LowRank => {
                // Vectors (biases, affine scales) stay point estimates: see the module design note.
                if t.dim() < 2 {
                    return Ok(());
                }
                let out = t.size()[0];
                let rest = t.numel() as i64 / out;
                let r = cfg.rank as i64;
                let rf = cfg.rank as f64;
                let sp2 = cfg.low_rank_sp * cfg.low_rank_sp;
                let v = (((rf * sp2 + 1.0).sqrt() - 1.0) / rf).sqrt();
                let m = (1.0 / rf).sqrt();
                let opts = (t.kind(), t.device());
                let a = Tensor::randn([s, out, r], opts) * v + m;
                let b = Tensor::randn([s, r, rest], opts) * v + m;
                let a = vs_add(vs, &format!("{name}{SUFFIX_LR_A}"), a, true);
                let b = vs_add(vs, &format!("{name}{SUFFIX_LR_B}"), b, true);
                ParamState::LowRank { mu: t, a, b }
            }
        };
        Ok(())
    }

    /// Back to a point estimate: the mean (mean-field, low-rank) or, for an ensemble, member 0
    /// when all members are equal (exact) and the member average otherwise.
    pub fn to_point(&mut self, vs: &nn::VarStore) -> Result<()> {
        let name = self.name.clone();
        let _guard = tch::no_grad_guard();
        let t = match &self.state {
            ParamState::Point(_) => return Ok(()),
            ParamState::MeanField { mu, .. } => {
                vs_remove(vs, &format!("{name}{SUFFIX_PSI}"));
                mu.shallow_clone()
            }
            ParamState::LowRank { mu, .. } => {
                vs_remove(vs, &format!("{name}{SUFFIX_LR_A}"));
                vs_remove(vs, &format!("{name}{SUFFIX_LR_B}"));
                mu.shallow_clone()
            }
            ParamState::Ensemble { members } => {
                let first = members.get(0);
                let all_equal = members
                    .eq_tensor(&first.unsqueeze(0))
                    .all()
                    .int64_value(&[])
                    != 0;
                let w = if all_equal {
                    first.detach().copy()
                } else {
                    members.detach().mean_dim(0, false, members.kind())
                };
                vs_remove(vs, &format!("{name}{SUFFIX_MEMBERS}"));
                vs_add(vs, &name, w, true)
            }
        };
        self.state = ParamState::Point(t);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn convert_adds_and_back_removes_suffixed_variables() {
        let _rng = crate::rng_lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs_add(
            &vs,
            "a.b.weight",
            Tensor::randn([3, 4], tch::kind::FLOAT_CPU),
            true,
        );
        let orig = w.copy();
        let mut p = BayesParam::point("a.b.weight", w);
        for fam in [Family::MeanField, Family::Ensemble, Family::LowRank] {
            p.convert(&vs, &PosteriorConfig::new(fam, 3)).unwrap();
            let names: Vec<String> = vs.variables().into_keys().collect();
            match fam {
                Family::MeanField => assert!(names.contains(&"a.b.weight_psi".to_string())),
                Family::Ensemble => {
                    assert!(names.contains(&"a.b.weight_members".to_string()));
                    assert!(!names.contains(&"a.b.weight".to_string()));
                }
                _ => assert!(names.contains(&"a.b.weight_lr_b".to_string())),
            }
            assert!(p.convert(&vs, &PosteriorConfig::new(fam, 3)).is_err());
            p.to_point(&vs).unwrap();
            let vars = vs.variables();
            assert_eq!(vars.len(), 1, "{fam}: {:?}", vars.keys());
            assert!(vars["a.b.weight"].equal(&orig));
            assert_eq!(vs.trainable_variables().len(), 1);
        }
    }

    #[test]
    fn group_by_suffix() {
        assert_eq!(ParamGroup::of_name("fc.weight_psi"), ParamGroup::Psi);
        assert_eq!(ParamGroup::of_name("fc.bias_members"), ParamGroup::Members);
        assert_eq!(ParamGroup::of_name("fc.weight_lr_a"), ParamGroup::LowRank);
        assert_eq!(ParamGroup::of_name("bn1.running_mean"), ParamGroup::Mean);
    }

    #[test]
    fn ensemble_draw_checks_member_count() {
        let _rng = crate::rng_lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs_add(&vs, "w", Tensor::ones([2], tch::kind::FLOAT_CPU), true);
        let mut p = BayesParam::point("w", w);
        p.convert(&vs, &PosteriorConfig::new(Family::Ensemble, 4))
            .unwrap();
        assert_eq!(p.draw(3).unwrap().size(), vec![3, 2]);
        let e = p.draw(5).unwrap_err().to_string();
        assert!(e.contains("only 4 members"), "{e}");
    }
}
