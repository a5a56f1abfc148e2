//! DI-MIM (Xie et al. 2019): MIM where, with probability `prob` per step, the gradient is taken at
//! a randomly resized and zero-padded copy of the input (to floor(1.1 x size), then resized back to
//! the original size as in the reference; SPEC section 5). The draws come from the attack's seed.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{check, AttackError, Result};
use crate::iterative::{run, Diversity, Extras, IterativeConfig};
use crate::{Attack, Budget, Victim};

/// DI-MIM settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiMimConfig {
    #[serde(flatten)]
    pub base: IterativeConfig,
    pub decay: f64,
    /// Padded size = floor(resize_rate x size); must be >= 1.
    pub resize_rate: f64,
    /// Probability that a step uses the diversified input (0.5, the usual default).
    pub prob: f64,
}

impl Default for DiMimConfig {
    /// SPEC 5: MIM defaults, resize rate 1.1, probability 0.5.
    fn default() -> Self {
        DiMimConfig {
            base: IterativeConfig::spec_default(false),
            decay: 1.0,
            resize_rate: 1.1,
            prob: 0.5,
        }
    }
}

impl DiMimConfig {
    /// Checks the base settings, decay >= 0, resize_rate >= 1, prob in [0, 1].
    pub fn validate(&self) -> Result<()> {
        self.base.validate("di-mim")?;
        check::non_negative("di-mim", "decay", self.decay)?;
        check::finite("di-mim", "resize_rate", self.resize_rate)?;
        if self.resize_rate < 1.0 {
            return Err(AttackError::config(
                "di-mim",
                "resize_rate",
                self.resize_rate,
                "must be >= 1",
            ));
        }
        check::probability("di-mim", "prob", self.prob)
    }
}

/// The DI-MIM attack.
#[derive(Debug, Clone, Default)]
pub struct DiMim {
    config: DiMimConfig,
}

impl DiMim {
    /// Validates the config.
    pub fn new(config: DiMimConfig) -> Result<Self> {
        config.validate()?;
        Ok(DiMim { config })
    }

    pub fn config(&self) -> &DiMimConfig {
        &self.config
    }
}

impl Attack for DiMim {
    fn name(&self) -> &str {
        "di-mim"
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
            smoothing: None,
            diversity: Some(Diversity {
                resize_rate: self.config.resize_rate,
                prob: self.config.prob,
            }),
        };
        run("di-mim", &self.config.base, &extras, victim, x, y, seed)
    }
}
