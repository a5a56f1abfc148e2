//! MIM (Dong et al. 2018): BIM with momentum; each gradient is normalised by its per-image mean
//! absolute value and accumulated with decay `decay` (1 in SPEC section 5), and the step follows
//! the sign of the accumulated gradient. No random start.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{check, Result};
use crate::iterative::{run, Extras, IterativeConfig};
use crate::{Attack, Budget, Victim};

/// MIM settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MimConfig {
    #[serde(flatten)]
    pub base: IterativeConfig,
    /// Momentum decay mu.
    pub decay: f64,
}

impl Default for MimConfig {
    /// SPEC 5: eps 16/255, step 1/255, 20 steps, decay 1, no random start.
    fn default() -> Self {
        MimConfig {
            base: IterativeConfig::spec_default(false),
            decay: 1.0,
        }
    }
}

impl MimConfig {
    /// Checks the base settings and decay >= 0.
    pub fn validate(&self) -> Result<()> {
        self.base.validate("mim")?;
        check::non_negative("mim", "decay", self.decay)
    }
}

/// The MIM attack.
#[derive(Debug, Clone, Default)]
pub struct Mim {
    config: MimConfig,
}

impl Mim {
    /// Validates the config.
    pub fn new(config: MimConfig) -> Result<Self> {
        config.validate()?;
        Ok(Mim { config })
    }

    pub fn config(&self) -> &MimConfig {
        &self.config
    }
}

impl Attack for Mim {
    fn name(&self) -> &str {
        "mim"
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("config serialises")
    }

    fn budget(&self) -> Option<Budget> {
        Some(Budget {
            norm: self.config.base.norm,
            eps: self.config.base.eps,
        })
    }

    fn targeted(&self) -> bool {
        self.config.base.objective.targeted
    }

    fn perturb(&self, victim: &dyn Victim, x: &Tensor, y: &Tensor, seed: u64) -> Result<Tensor> {
        let extras = Extras {
            momentum: Some(self.config.decay),
            ..Extras::default()
        };
        run("mim", &self.config.base, &extras, victim, x, y, seed)
    }
}
