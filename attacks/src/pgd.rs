//! PGD (Madry et al. 2018): BIM from a uniform random start in the ball, l_inf or l_2 (SPEC
//! section 5; l_2 radius eps * sqrt(D), step (1/255) * sqrt(D)).

use tch::Tensor;

use crate::error::Result;
use crate::geometry::Norm;
use crate::iterative::{run, Extras, IterativeConfig};
use crate::{Attack, Budget, Victim};

/// The PGD attack.
#[derive(Debug, Clone)]
pub struct Pgd {
    config: IterativeConfig,
}

impl Default for Pgd {
    /// SPEC 5: eps 16/255, step 1/255, 20 steps, random start, l_inf.
    fn default() -> Self {
        Pgd {
            config: IterativeConfig::spec_default(true),
        }
    }
}

impl Pgd {
    /// Validates the config.
    pub fn new(config: IterativeConfig) -> Result<Self> {
        let attack = Pgd { config };
        attack.config.validate(attack.name())?;
        Ok(attack)
    }

    /// SPEC 5 defaults in l_2.
    pub fn default_l2() -> Self {
        Pgd {
            config: IterativeConfig {
                norm: Norm::L2,
                ..IterativeConfig::spec_default(true)
            },
        }
    }

    pub fn config(&self) -> &IterativeConfig {
        &self.config
    }
}

impl Attack for Pgd {
    fn name(&self) -> &str {
        match self.config.norm {
            Norm::Linf => "pgd",
            Norm::L2 => "pgd-l2",
        }
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
        run(
            self.name(),
            &self.config,
            &Extras::default(),
            victim,
            x,
            y,
            seed,
        )
    }
}
