//! DI-MIM (Xie et al. 2019): MIM where, with probability `prob` per step, the gradient is taken at
//! a randomly resized and zero-padded copy of the input (to floor(1.1 x size), then resized back to
//! the original size as in the reference implementation). The draws come from the attack's seed.

use serde::{Deserialize, Serialize};

use crate::error::{check, AttackError, Result};
use crate::iterative::{iterative_attack, Diversity, Extras, IterativeConfig, Variant};

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
    /// MIM defaults, resize rate 1.1, probability 0.5.
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

impl Variant for DiMimConfig {
    fn base(&self) -> &IterativeConfig {
        &self.base
    }

    fn check(&self, _attack: &str) -> Result<()> {
        self.validate()
    }

    fn extras(&self) -> Extras {
        Extras {
            momentum: Some(self.decay),
            smoothing: None,
            diversity: Some(Diversity {
                resize_rate: self.resize_rate,
                prob: self.prob,
            }),
        }
    }
}

iterative_attack!(
    /// The DI-MIM attack.
    #[derive(Default)]
    DiMim(DiMimConfig),
    name = "di-mim"
);
