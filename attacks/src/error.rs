//! Typed errors of the attack crate: each names the attack, the offending parameter or tensor and
//! the constraint it violates, so the CLI can print it as is.

use thiserror::Error;

/// Everything that can go wrong when configuring or running an attack.
#[derive(Debug, Error)]
pub enum AttackError {
    /// A configuration value violates its constraint (eps < 0, steps = 0, a NaN, ...).
    #[error("{attack}: invalid parameter `{param}` = {value}: {reason}")]
    InvalidConfig {
        attack: String,
        param: String,
        value: String,
        reason: String,
    },

    /// An input or victim output has the wrong shape or dtype.
    #[error("{attack}: {what} has shape {got:?}, expected {expected}")]
    Shape {
        attack: String,
        what: String,
        got: Vec<i64>,
        expected: String,
    },

    /// An input has the right shape but bad values (pixels outside [0, 1], a label out of range).
    #[error("{attack}: invalid {what}: {reason}")]
    InvalidInput {
        attack: String,
        what: String,
        reason: String,
    },

    /// `by_name` was given a name that is not registered.
    #[error("unknown attack `{name}`; known attacks: {known}")]
    UnknownAttack { name: String, known: String },

    /// `by_name` was given a parameter the attack does not have.
    #[error("attack `{attack}` has no parameter `{param}`; its parameters are: {known}")]
    UnknownParam {
        attack: String,
        param: String,
        known: String,
    },

    /// `by_name` parameters that do not deserialise into the attack's config.
    #[error("attack `{attack}`: parameters do not parse: {source}")]
    Params {
        attack: String,
        #[source]
        source: serde_json::Error,
    },

    /// The adaptive ("mimicry") objective needs a detector score the victim does not expose.
    #[error(
        "{attack}: adaptive_c = {c} needs a detector score, but the victim exposes none \
         (Victim::score returned None); set adaptive_c = 0 or give the victim a score"
    )]
    NoScore { attack: String, c: f64 },

    /// An attack on a detector (selective, orthogonal, or any with a threshold) needs the
    /// victim's detector score.
    #[error(
        "{attack}: this attack needs a detector score, but the victim exposes none \
         (Victim::score returned None); attack a model with a detector, or use `pgd-restarts`"
    )]
    NoDetector { attack: String },

    /// A libtorch call failed.
    #[error("{attack}: torch error: {source}")]
    Torch {
        attack: String,
        #[source]
        source: tch::TchError,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, AttackError>;

impl AttackError {
    pub(crate) fn config(
        attack: &str,
        param: &str,
        value: impl std::fmt::Display,
        reason: &str,
    ) -> Self {
        AttackError::InvalidConfig {
            attack: attack.to_string(),
            param: param.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn shape(attack: &str, what: &str, got: Vec<i64>, expected: &str) -> Self {
        AttackError::Shape {
            attack: attack.to_string(),
            what: what.to_string(),
            got,
            expected: expected.to_string(),
        }
    }

    pub(crate) fn input(attack: &str, what: &str, reason: impl Into<String>) -> Self {
        AttackError::InvalidInput {
            attack: attack.to_string(),
            what: what.to_string(),
            reason: reason.into(),
        }
    }
}

/// Checks shared by every config's `validate()`.
pub(crate) mod check {
    use super::{AttackError, Result};

    pub fn finite(attack: &str, param: &str, v: f64) -> Result<()> {
        if v.is_finite() {
            Ok(())
        } else {
            Err(AttackError::config(attack, param, v, "must be finite"))
        }
    }

    pub fn non_negative(attack: &str, param: &str, v: f64) -> Result<()> {
        finite(attack, param, v)?;
        if v >= 0.0 {
            Ok(())
        } else {
            Err(AttackError::config(attack, param, v, "must be >= 0"))
        }
    }

    pub fn positive(attack: &str, param: &str, v: f64) -> Result<()> {
        finite(attack, param, v)?;
        if v > 0.0 {
            Ok(())
        } else {
            Err(AttackError::config(attack, param, v, "must be > 0"))
        }
    }

    pub fn at_least(attack: &str, param: &str, v: usize, min: usize) -> Result<()> {
        if v >= min {
            Ok(())
        } else {
            Err(AttackError::config(
                attack,
                param,
                v,
                &format!("must be >= {min}"),
            ))
        }
    }

    pub fn at_most(attack: &str, param: &str, v: usize, max: usize) -> Result<()> {
        if v <= max {
            Ok(())
        } else {
            Err(AttackError::config(
                attack,
                param,
                v,
                &format!("must be <= {max} (a larger budget would not finish in useful time)"),
            ))
        }
    }

    pub fn probability(attack: &str, param: &str, v: f64) -> Result<()> {
        finite(attack, param, v)?;
        if (0.0..=1.0).contains(&v) {
            Ok(())
        } else {
            Err(AttackError::config(attack, param, v, "must lie in [0, 1]"))
        }
    }
}
