//! FGSM (Goodfellow et al. 2015), with an optional uniform random start (docs/design.md
//! section 8), in l_inf or l_2 (radius eps * sqrt(D)). One gradient step of size `step_size`
//! (default eps) from x or from the random start, projected to the ball and [0, 1].

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{check, Result};
use crate::geometry::Norm;
use crate::iterative::{run, Extras, IterativeConfig};
use crate::objective::Objective;
use crate::{Attack, Budget, Victim};

/// FGSM settings; `eps`, `step_size` per-coordinate (l_2: times sqrt(D)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FgsmConfig {
    pub eps: f64,
    /// Step length; `None` = eps (the plain FGSM step).
    pub step_size: Option<f64>,
    /// Start from x + U(-eps, eps) (l_inf) or a uniform point of the l_2 ball.
    pub random_start: bool,
    pub norm: Norm,
    #[serde(flatten)]
    pub objective: Objective,
}

impl Default for FgsmConfig {
    /// LiBRe's setting (docs/design.md section 8): eps 16/255, l_inf, no random start,
    /// cross-entropy.
    fn default() -> Self {
        FgsmConfig {
            eps: 16.0 / 255.0,
            step_size: None,
            random_start: false,
            norm: Norm::Linf,
            objective: Objective::default(),
        }
    }
}

impl FgsmConfig {
    /// Checks eps >= 0, step_size >= 0, finite values and the objective.
    pub fn validate(&self) -> Result<()> {
        let name = self.name();
        check::non_negative(name, "eps", self.eps)?;
        if let Some(s) = self.step_size {
            check::non_negative(name, "step_size", s)?;
        }
        self.objective.validate(name)
    }

    fn name(&self) -> &'static str {
        match (self.norm, self.random_start) {
            (Norm::L2, _) => "fgsm-l2",
            (Norm::Linf, true) => "fgsm-rs",
            (Norm::Linf, false) => "fgsm",
        }
    }
}

/// The FGSM attack.
#[derive(Debug, Clone)]
pub struct Fgsm {
    config: FgsmConfig,
}

impl Fgsm {
    /// Validates the config.
    pub fn new(config: FgsmConfig) -> Result<Self> {
        config.validate()?;
        Ok(Fgsm { config })
    }

    pub fn config(&self) -> &FgsmConfig {
        &self.config
    }
}

impl Attack for Fgsm {
    fn name(&self) -> &str {
        self.config.name()
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("config serialises")
    }

    fn budget(&self) -> Option<Budget> {
        Some(Budget {
            norm: self.config.norm,
            eps: self.config.eps,
        })
    }

    fn targeted(&self) -> bool {
        self.config.objective.targeted
    }

    fn perturb(&self, victim: &dyn Victim, x: &Tensor, y: &Tensor, seed: u64) -> Result<Tensor> {
        let c = &self.config;
        let it = IterativeConfig {
            eps: c.eps,
            step_size: c.step_size.unwrap_or(c.eps),
            steps: 1,
            random_start: c.random_start,
            norm: c.norm,
            objective: c.objective.clone(),
        };
        run(self.name(), &it, &Extras::default(), victim, x, y, seed)
    }
}
