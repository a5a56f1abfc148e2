//! TIM (Dong et al. 2019): MIM whose gradient is first smoothed by a depth-wise convolution with a
//! `kernel_size` x `kernel_size` Gaussian (7 x 7, nsig 3 by default), which makes the perturbation
//! translation invariant and transfer better.

use serde::{Deserialize, Serialize};

use crate::error::{check, AttackError, Result};
use crate::iterative::{gaussian_kernel, iterative_attack, Extras, IterativeConfig, Variant};

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
    /// MIM defaults with a 7 x 7 kernel, nsig 3.
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

impl Variant for TimConfig {
    fn base(&self) -> &IterativeConfig {
        &self.base
    }

    fn check(&self, _attack: &str) -> Result<()> {
        self.validate()
    }

    fn extras(&self) -> Extras {
        Extras {
            momentum: Some(self.decay),
            smoothing: Some(gaussian_kernel(self.kernel_size, self.nsig)),
            diversity: None,
        }
    }
}

iterative_attack!(
    /// The TIM attack.
    #[derive(Default)]
    Tim(TimConfig),
    name = "tim"
);
