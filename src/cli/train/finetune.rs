//! `libre finetune`: a pretrained model converted to a posterior and fine-tuned (BayesAdapter),
//! or trained as a LiBRe ensemble (`--recipe libre`, `libre-robust`).

use super::args::{parse_range, parse_sampling, FinetuneArgs};
use super::{common_config, drive};
use crate::cli::Output;
use libre::bayes::prior::PriorConfig;
use libre::bayes::{Family, LayerSelection, PosteriorConfig};
use libre::detect::objective::customary_eps;
use libre::detect::{LibreConfig, ObjectiveKind};
use libre::train::{self, TrainConfig, UncertaintyReg};
use serde_json::json;

/// `libre finetune`.
pub fn run_finetune(args: FinetuneArgs, out: Output) -> anyhow::Result<()> {
    let c = &args.common;
    let epochs = c.epochs.unwrap_or(1);
    let libre_recipe = args.recipe == "libre" || args.recipe == "libre-robust";
    let robust_recipe = args.recipe == "libre-robust";
    if !robust_recipe {
        let given = [
            ("--adv-attack", args.adv_attack != "selective"),
            ("--adv-eps", args.adv_eps.is_some()),
            ("--adv-steps", args.adv_steps != 10),
            ("--adv-step-size", args.adv_step_size.is_some()),
            ("--adv-c", args.adv_c != 10.0),
            ("--adv-ce", args.adv_ce != 1.0),
            ("--adv-hinge", args.adv_hinge != "misclassified"),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
            anyhow::bail!("{flag} applies to --recipe libre-robust only");
        }
    }
    drive(out, c, &mut |ds, device| {
        let w = args
            .weights
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--weights is required"))?;
        let default_post = if libre_recipe {
            "ensemble"
        } else {
            "mean-field"
        };
        let family: Family = args.posterior.as_deref().unwrap_or(default_post).parse()?;
        if family == Family::Point {
            anyhow::bail!("--posterior must be mean-field, ensemble or low-rank");
        }
        if libre_recipe && !matches!(family, Family::Ensemble | Family::MeanField) {
            anyhow::bail!(
                "--recipe libre trains a deep ensemble (members routed per image) or a mean-field \
                 posterior; --posterior {family} is not supported with it"
            );
        }
        let default_layers = if libre_recipe { "last-block" } else { "all" };
        let sel: LayerSelection = args.layers.as_deref().unwrap_or(default_layers).parse()?;
        let libre_cfg = if libre_recipe {
            let objective: ObjectiveKind = args.objective.parse()?;
            let mut l = LibreConfig::for_attack_eps(objective, customary_eps(ds.shape()));
            if let Some(r) = &args.noise_eps {
                l.noise_eps = parse_range(r)?;
            }
            l.alpha = args.alpha;
            l.gamma = args.gamma;
            l.blur_prob = args.blur_prob;
            l.member_init_std = args.member_init_std;
            if robust_recipe {
                let eps = args.adv_eps.unwrap_or(customary_eps(ds.shape()));
                let mut a = libre::detect::objective::AdversarialConfig::for_attack_eps(eps);
                a.attack = args.adv_attack.clone();
                a.steps = args.adv_steps;
                a.step_size = args.adv_step_size.unwrap_or(eps / 4.0);
                a.c = args.adv_c;
                a.ce_weight = args.adv_ce;
                a.hinge_misclassified_only = args.adv_hinge == "misclassified";
                out.note(format!(
                    "libre-robust: copies crafted by {} (eps {}, {} steps of {}{}), adversarial \
                     cross-entropy weight {}",
                    a.attack,
                    a.eps,
                    a.steps,
                    a.step_size,
                    if a.attack == "mimicry" {
                        format!(", C {}", a.c)
                    } else {
                        String::new()
                    },
                    a.ce_weight
                ));
                l.adversarial = Some(a);
            }
            l.validate()?;
            out.note(format!(
                "LiBRe: objective {}, alpha {}, gamma {}, noise eps U[{}, {}], blur {}, member \
                 init std {}",
                args.objective,
                l.alpha,
                l.gamma,
                l.noise_eps.0,
                l.noise_eps.1,
                l.blur_prob,
                l.member_init_std
            ));
            Some(l)
        } else {
            None
        };
        let path = libre::weights::zoo::resolve(&w, &mut crate::cli::fetch_note(&out))?;
        let (mut model, _) = libre::weights::checkpoint::load(&path, device)?;
        tch::manual_seed(c.seed);
        let pc = PosteriorConfig::new(family, args.mc_samples);
        let converted = model.convert(&sel, &pc)?;
        if let Some(l) = &libre_cfg {
            libre::detect::objective::spread_members(model.as_ref(), l.member_init_std)?;
        }
        let steps_per_epoch = ds.len().div_ceil(c.batch_size.max(1));
        let lr_post = args.lr_posterior.unwrap_or(match family {
            Family::MeanField => 0.1,
            _ => 1e-3,
        });
        let (groups, prior) = if libre_recipe {
            (
                train::libre_groups(
                    family,
                    args.lr,
                    args.ft_lr,
                    args.decay,
                    args.mc_samples,
                    epochs * steps_per_epoch,
                ),
                None,
            )
        } else {
            (
                train::finetune_groups(family, args.lr_mean, lr_post, epochs, steps_per_epoch),
                Some(PriorConfig {
                    decay: args.decay,
                    num_data: ds.len(),
                    moped: args.moped,
                }),
            )
        };
        let cfg = TrainConfig {
            groups,
            prior,
            sampling: Some(parse_sampling(&args.sampling)?),
            uncertainty_reg: args.unc_reg_eps.map(|eps| UncertaintyReg {
                eps,
                gamma: args.unc_reg_gamma,
                coef: args.unc_reg_coef,
            }),
            eval_samples: args.mc_samples,
            libre: libre_cfg,
            ..common_config(c, "finetune", ds, epochs)?
        };
        Ok((
            model,
            cfg,
            json!({ "weights": w, "recipe": args.recipe, "converted_layers": converted }),
        ))
    })
}
