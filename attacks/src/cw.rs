//! CW-linf: l_inf PGD on the margin loss `max_{j != y} log p_j - log p_y` (Carlini & Wagner 2017's
//! loss in Madry et al. 2018's optimiser). For the l_2 optimisation attack see [`crate::cw_l2`].

use crate::iterative::{iterative_attack, IterativeConfig};
use crate::objective::Objective;

iterative_attack!(
    /// The CW-linf attack (PGD with the margin objective). Any loss is accepted, but the attack
    /// is meant for the margin.
    CwLinf(IterativeConfig),
    name = "cw"
);

impl Default for CwLinf {
    /// eps 16/255, step 1/255, 20 steps, random start, margin loss.
    fn default() -> Self {
        CwLinf {
            config: IterativeConfig {
                objective: Objective::margin(),
                ..IterativeConfig::spec_default(true)
            },
        }
    }
}
