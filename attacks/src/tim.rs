//! TIM (Dong et al. 2019): MIM whose gradient is first smoothed by a depth-wise convolution with a
//! `kernel_size` x `kernel_size` Gaussian (7 x 7, nsig 3 in SPEC section 5), which makes the
//! perturbation translation invariant and transfer better.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{check, AttackError, Result};
use crate::iterative::{gaussian_kernel, run, Extras, IterativeConfig};
use crate::{Attack, Budget, Victim};

/// TIM settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimConfig {
    #[serde(flatten)]
    pub base: IterativeConfig,
    pub decay: f64,
    /// Odd side of the Gaussian kernel.
    pub kernel_size: usize,
    /// The kernel samples the Gaussian pdf on [-nsig, nsig].
    pub nsig: f64,
}

impl Default for TimConfig {
    /// SPEC 5: MIM defaults with a 7 x 7 kernel, nsig 3.
    fn default() -> Self {
        TimConfig {
            base: IterativeConfig::spec_default(false),
            decay: 1.0,
            kernel_size: 7,
            nsig: 3.0,
        }
    }
}

impl TimConfig {
    /// Checks the base settings, decay >= 0, an odd kernel size >= 1 and nsig > 0.
    pub fn validate(&self) -> Result<()> {
        self.base.validate("tim")?;
        check::non_negative("tim", "decay", self.decay)?;
        check::at_least("tim", "kernel_size", self.kernel_size, 1)?;
        if self.kernel_size & 1 == 0 {
            return Err(AttackError::config(
                "tim",
                "kernel_size",
                self.kernel_size,
                "must be odd so the smoothed gradient keeps the image size",
            ));
        }
        check::positive("tim", "nsig", self.nsig)
    }
}

/// The TIM attack.
#[derive(Debug, Clone, Default)]
pub struct Tim {
    config: TimConfig,
}

impl Tim {
    /// Validates the config.
    pub fn new(config: TimConfig) -> Result<Self> {
        config.validate()?;
        Ok(Tim { config })
    }

    pub fn config(&self) -> &TimConfig {
        &self.config
    }
}

impl Attack for Tim {
    fn name(&self) -> &str {
        "tim"
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
            smoothing: Some(gaussian_kernel(self.config.kernel_size, self.config.nsig)),
            diversity: None,
        };
        run("tim", &self.config.base, &extras, victim, x, y, seed)
    }
}
