//! Attacks by name, for the CLI: `by_name("pgd", &json!({"eps": 0.03, "steps": 40}))`.
//!
//! Parameters are a JSON object laid over the attack's default config (docs/design.md section 8);
//! every key must be a field of that config (objective fields such as `targeted`, `loss`,
//! `mc_mode`, `eot_samples`, `adaptive_c` sit at the top level), and the result is validated.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::adaptive::{Adaptive, AdaptiveConfig, AdaptiveMode, ScoreForm};
use crate::bim::Bim;
use crate::cw::CwLinf;
use crate::cw_l2::{CwL2, CwL2Config};
use crate::deepfool::{DeepFool, DeepFoolConfig};
use crate::di_mim::{DiMim, DiMimConfig};
use crate::error::{AttackError, Result};
use crate::fgsm::{Fgsm, FgsmConfig};
use crate::geometry::Norm;
use crate::iterative::IterativeConfig;
use crate::mim::{Mim, MimConfig};
use crate::pgd::Pgd;
use crate::spsa::{Spsa, SpsaConfig};
use crate::tim::{Tim, TimConfig};
use crate::Attack;

/// Every name [`by_name`] accepts.
pub const ATTACK_NAMES: &[&str] = &[
    "fgsm",
    "fgsm-rs",
    "fgsm-l2",
    "bim",
    "bim-l2",
    "pgd",
    "pgd-l2",
    "mim",
    "tim",
    "di-mim",
    "cw",
    "cw-l2",
    "deepfool",
    "deepfool-linf",
    "spsa",
    "pgd-restarts",
    "mimicry",
    "mimicry-log",
    "selective",
    "orthogonal",
];

/// The adaptive attacks among [`ATTACK_NAMES`] (they take a `threshold` and, except
/// `pgd-restarts`, need the victim's detector score).
pub const ADAPTIVE_NAMES: &[&str] = &[
    "pgd-restarts",
    "mimicry",
    "mimicry-log",
    "selective",
    "orthogonal",
];

/// Builds the attack `name` from its defaults overridden by `params` (a JSON object, or null).
pub fn by_name(name: &str, params: &Value) -> Result<Box<dyn Attack>> {
    let it = |random_start: bool, norm: Norm| IterativeConfig {
        norm,
        ..IterativeConfig::spec_default(random_start)
    };
    Ok(match name {
        "fgsm" => Box::new(Fgsm::new(overlay(name, FgsmConfig::default(), params)?)?),
        "fgsm-rs" => Box::new(Fgsm::new(overlay(
            name,
            FgsmConfig {
                random_start: true,
                ..FgsmConfig::default()
            },
            params,
        )?)?),
        "fgsm-l2" => Box::new(Fgsm::new(overlay(
            name,
            FgsmConfig {
                norm: Norm::L2,
                ..FgsmConfig::default()
            },
            params,
        )?)?),
        "bim" => Box::new(Bim::new(overlay(name, it(false, Norm::Linf), params)?)?),
        "bim-l2" => Box::new(Bim::new(overlay(name, it(false, Norm::L2), params)?)?),
        "pgd" => Box::new(Pgd::new(overlay(name, it(true, Norm::Linf), params)?)?),
        "pgd-l2" => Box::new(Pgd::new(overlay(name, it(true, Norm::L2), params)?)?),
        "mim" => Box::new(Mim::new(overlay(name, MimConfig::default(), params)?)?),
        "tim" => Box::new(Tim::new(overlay(name, TimConfig::default(), params)?)?),
        "di-mim" => Box::new(DiMim::new(overlay(name, DiMimConfig::default(), params)?)?),
        "cw" => Box::new(CwLinf::new(overlay(
            name,
            CwLinf::default().config().clone(),
            params,
        )?)?),
        "cw-l2" => Box::new(CwL2::new(overlay(name, CwL2Config::default(), params)?)?),
        "deepfool" => Box::new(DeepFool::new(overlay(
            name,
            DeepFoolConfig::default(),
            params,
        )?)?),
        "deepfool-linf" => Box::new(DeepFool::new(overlay(
            name,
            DeepFoolConfig {
                norm: Norm::Linf,
                ..DeepFoolConfig::default()
            },
            params,
        )?)?),
        "spsa" => Box::new(Spsa::new(overlay(name, SpsaConfig::default(), params)?)?),
        "pgd-restarts" | "mimicry" | "mimicry-log" | "selective" | "orthogonal" => {
            let (mode, form) = match name {
                "pgd-restarts" => (AdaptiveMode::Plain, ScoreForm::Linear),
                "mimicry" => (AdaptiveMode::Mimicry, ScoreForm::Linear),
                "mimicry-log" => (AdaptiveMode::Mimicry, ScoreForm::Log),
                "selective" => (AdaptiveMode::Selective, ScoreForm::Linear),
                _ => (AdaptiveMode::Orthogonal, ScoreForm::Linear),
            };
            let cfg: AdaptiveConfig = overlay(name, AdaptiveConfig::new(mode, form), params)?;
            if cfg.name() != name {
                return Err(AttackError::config(
                    name,
                    "mode",
                    cfg.name(),
                    "is fixed by the attack's name (use that attack's name instead)",
                ));
            }
            Box::new(Adaptive::new(cfg)?)
        }
        _ => {
            return Err(AttackError::UnknownAttack {
                name: name.to_string(),
                known: ATTACK_NAMES.join(", "),
            })
        }
    })
}

/// `defaults` with the keys of `params` replaced; unknown keys are errors.
fn overlay<C: Serialize + DeserializeOwned>(
    attack: &str,
    defaults: C,
    params: &Value,
) -> Result<C> {
    let mut base = serde_json::to_value(defaults).expect("configs serialise");
    let fields = base.as_object_mut().expect("configs serialise to objects");
    match params {
        Value::Null => {}
        Value::Object(p) => {
            for (k, v) in p {
                if !fields.contains_key(k) {
                    let mut known: Vec<&str> = fields.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    return Err(AttackError::UnknownParam {
                        attack: attack.to_string(),
                        param: k.clone(),
                        known: known.join(", "),
                    });
                }
                fields.insert(k.clone(), v.clone());
            }
        }
        other => {
            return Err(AttackError::InvalidConfig {
                attack: attack.to_string(),
                param: "params".into(),
                value: other.to_string(),
                reason: "must be a JSON object of parameter overrides".into(),
            })
        }
    }
    serde_json::from_value(base).map_err(|source| AttackError::Params {
        attack: attack.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_name_builds_with_defaults_and_reports_its_name() {
        for name in ATTACK_NAMES {
            let a = by_name(name, &Value::Null).unwrap();
            assert_eq!(a.name(), *name);
            assert!(a.config_json().is_object());
        }
    }

    #[test]
    fn overrides_apply_and_bad_values_are_named() {
        let a = by_name("pgd", &json!({"eps": 0.3, "steps": 40, "targeted": true})).unwrap();
        assert_eq!(a.config_json()["eps"], json!(0.3));
        assert_eq!(a.config_json()["steps"], json!(40));
        assert!(a.targeted());
        let e = by_name("fgsm", &json!({"steps": 3}))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no parameter `steps`"), "{e}");
        let e = by_name("bim", &json!({"eps": -0.1}))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`eps`") && e.contains(">= 0"), "{e}");
        let e = by_name("bim", &json!({"steps": 0}))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`steps`"), "{e}");
        let e = by_name("spsa", &json!({"delta": "x"}))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("do not parse"), "{e}");
        let e = by_name("nope", &Value::Null).err().unwrap().to_string();
        assert!(
            e.contains("unknown attack `nope`") && e.contains("pgd-l2"),
            "{e}"
        );
        let e = by_name("mim", &json!({"eps": f64::NAN})).err();
        // serde_json maps NaN to null, which does not parse as f64: still an error.
        assert!(e.is_some());
    }
}
