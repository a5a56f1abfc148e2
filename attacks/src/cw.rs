//! CW-linf: l_inf PGD on the margin loss `max_{j != y} log p_j - log p_y` (SPEC section 5, as the
//! reference; Carlini & Wagner's loss in Madry et al.'s optimiser). For the l_2 optimisation attack
//! see [`crate::cw_l2`].

use tch::Tensor;

use crate::error::Result;
use crate::iterative::{run, Extras, IterativeConfig};
use crate::objective::Objective;
use crate::{Attack, Budget, Victim};

/// The CW-linf attack (PGD with the margin objective).
#[derive(Debug, Clone)]
pub struct CwLinf {
    config: IterativeConfig,
}

impl Default for CwLinf {
    /// SPEC 5: eps 16/255, step 1/255, 20 steps, random start, margin loss.
    fn default() -> Self {
        CwLinf {
            config: IterativeConfig {
                objective: Objective::margin(),
                ..IterativeConfig::spec_default(true)
            },
        }
    }
}

impl CwLinf {
    /// Validates the config (any loss is accepted, but the attack is meant for the margin).
    pub fn new(config: IterativeConfig) -> Result<Self> {
        config.validate("cw")?;
        Ok(CwLinf { config })
    }

    pub fn config(&self) -> &IterativeConfig {
        &self.config
    }
}

impl Attack for CwLinf {
    fn name(&self) -> &str {
        "cw"
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
        run("cw", &self.config, &Extras::default(), victim, x, y, seed)
    }
}
