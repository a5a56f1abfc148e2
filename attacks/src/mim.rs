//! MIM (Dong et al. 2018): BIM with momentum; each gradient is normalised by its per-image mean
//! absolute value and accumulated with decay `decay` (1 in the paper), and the step follows the
//! sign of the accumulated gradient. No random start.

use serde::{Deserialize, Serialize};

use crate::error::{check, Result};
use crate::iterative::{iterative_attack, Extras, IterativeConfig, Variant};

/// MIM settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MimConfig {
    #[serde(flatten)]
    pub base: IterativeConfig,
    /// Momentum decay mu.
    pub decay: f64,
}

impl Default for MimConfig {
    /// eps 16/255, step 1/255, 20 steps, decay 1, no random start.
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

impl Variant for MimConfig {
    fn base(&self) -> &IterativeConfig {
        &self.base
    }

    fn check(&self, _attack: &str) -> Result<()> {
        self.validate()
    }

    fn extras(&self) -> Extras {
        Extras {
            momentum: Some(self.decay),
            ..Extras::default()
        }
    }
}

iterative_attack!(
    /// The MIM attack.
    #[derive(Default)]
    Mim(MimConfig),
    name = "mim"
);
