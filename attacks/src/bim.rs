//! BIM (Kurakin et al. 2017): iterated FGSM steps from x itself, no random start, l_inf or
//! l_2 (SPEC section 5; l_2 radius eps * sqrt(D), step (1/255) * sqrt(D)).

use tch::Tensor;

use crate::error::Result;
use crate::geometry::Norm;
use crate::iterative::{run, Extras, IterativeConfig};
use crate::{Attack, Budget, Victim};

/// The BIM attack.
#[derive(Debug, Clone)]
pub struct Bim {
    config: IterativeConfig,
}

impl Default for Bim {
    /// SPEC 5: eps 16/255, step 1/255, 20 steps, no random start, l_inf.
    fn default() -> Self {
        Bim {
            config: IterativeConfig::spec_default(false),
        }
    }
}

impl Bim {
    /// Validates the config.
    pub fn new(config: IterativeConfig) -> Result<Self> {
        let attack = Bim { config };
        attack.config.validate(attack.name())?;
        Ok(attack)
    }

    /// SPEC 5 defaults in l_2.
    pub fn default_l2() -> Self {
        Bim {
            config: IterativeConfig {
                norm: Norm::L2,
                ..IterativeConfig::spec_default(false)
            },
        }
    }

    pub fn config(&self) -> &IterativeConfig {
        &self.config
    }
}

impl Attack for Bim {
    fn name(&self) -> &str {
        match self.config.norm {
            Norm::Linf => "bim",
            Norm::L2 => "bim-l2",
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
