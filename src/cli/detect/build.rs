//! The detector `libre calibrate --detector` names, built from its flags: the model's own
//! uncertainty, MC dropout, or a classic / input-transformation detector fitted here
//! ([`libre::detect::Detector::with_mc_dropout`], [`libre::detect::Detector::fit_classic`]).

use super::checks::comma_list;
use super::CalibrateArgs;
use crate::cli::{fetch_note, Output};
use libre::bayes::mode::McDropout;
use libre::detect::classic::{self, ClassicKind, ClassicParams, FitData, FitSet, LogisticSets};
use libre::detect::transform::{magnet, squeeze, TransformConfig};
use libre::detect::{detector, Detector};

/// MC dropout at the `--dropout` blocks (None without them).
fn dropout(args: &CalibrateArgs) -> anyhow::Result<Option<McDropout>> {
    let layers = comma_list(&args.dropout);
    if layers.is_empty() {
        return Ok(None);
    }
    Ok(Some(detector::mc_dropout(
        layers,
        args.dropout_p,
        args.mc_samples,
    )?))
}

/// Builds `det` into the detector `--detector` asks for: MC dropout set on the model, or a
/// classic detector fitted on --fit-data (and the logistic regression's examples).
pub(super) fn build_detector(
    args: &CalibrateArgs,
    mut det: Detector,
    device: tch::Device,
    out: &Output,
) -> anyhow::Result<Detector> {
    let name = args.detector.as_str();
    let kind = match name {
        "libre" => return Ok(det),
        // BU (Feinman et al.) is MC dropout's softmax variance: the same detector, another score.
        "mc-dropout" | "bu" => {
            if det.model().posterior().is_some() {
                anyhow::bail!(
                    "--detector {name} takes a deterministic network (this one has a posterior)"
                );
            }
            let d = dropout(args)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "--detector {name} needs --dropout BLOCKS (the model's blocks: {})",
                    classic::block_names(det.model())
                        .map(|v| v.join(", "))
                        .unwrap_or_default()
                )
            })?;
            return Ok(det.with_mc_dropout(d)?);
        }
        name => name.parse::<ClassicKind>()?,
    };
    let params = match kind {
        ClassicKind::Squeeze | ClassicKind::Magnet => ClassicParams {
            transform: Some(transform_config(args, kind)?),
            ..ClassicParams::new(kind)
        },
        _ => {
            if args.fit_data.is_none() {
                anyhow::bail!(
                    "--detector {name} is fitted on clean labelled images: pass --fit-data SPEC \
                     (disjoint from the calibration --data)"
                );
            }
            let d = ClassicParams::new(kind);
            ClassicParams {
                layers: comma_list(&args.layers),
                bandwidth: args.bandwidth.unwrap_or(d.bandwidth),
                k: args.lid_k.unwrap_or(d.k),
                reference: args.lid_reference.unwrap_or(d.reference),
                noise: args.noise.unwrap_or(d.noise),
                dropout: dropout(args)?,
                ..d
            }
        }
    };
    if kind == ClassicKind::KdBu && params.dropout.is_none() {
        anyhow::bail!("kd-bu needs MC dropout for BU: pass --dropout BLOCKS (and --dropout-p)");
    }
    let cfg = params.check()?;
    let open = |spec: &String| libre::data::open(spec, None, &mut fetch_note(out));
    let fit = match (kind, &args.fit_data) {
        (ClassicKind::Squeeze, _) => None,
        (_, Some(f)) => Some((open(f)?, f.as_str())),
        (_, None) => anyhow::bail!(
            "--detector magnet trains its autoencoders on clean images: pass --fit-data SPEC \
             (disjoint from the calibration --data), e.g. --fit-data 'mnist:train[0:10000]'"
        ),
    };
    let lr = match (&args.fit_adversarial, &args.fit_clean) {
        (Some(a), Some(c)) => Some(((open(a)?, a.as_str()), (open(c)?, c.as_str()))),
        (None, None) => None,
        _ => anyhow::bail!("--fit-adversarial and --fit-clean go together"),
    };
    if kind.needs_adversarial() && lr.is_none() {
        anyhow::bail!(
            "{name} is a logistic regression on adversarial vs clean examples: pass \
             --fit-adversarial FILE and --fit-clean SPEC"
        );
    }
    match (&fit, kind) {
        (Some((ds, f)), ClassicKind::Magnet) => out.note(format!(
            "training MagNet's autoencoders on {} clean images of {f} (the last {} held out)",
            ds.len() - ds.len() / 10,
            ds.len() / 10
        )),
        (Some((ds, f)), _) => out.note(format!(
            "fitting {name} on {} clean images of {f}{}",
            ds.len(),
            lr.as_ref()
                .map(|((a, an), (c, cn))| format!(
                    "; logistic regression on {} adversarial ({an}) vs {} clean ({cn})",
                    a.len(),
                    c.len()
                ))
                .unwrap_or_default()
        )),
        (None, _) => {}
    }
    fn set<'a>((data, name): &'a (libre::data::Dataset, &'a str)) -> FitSet<'a> {
        FitSet { data, name }
    }
    let data = FitData {
        clean: fit.as_ref().map(set),
        logistic: lr.as_ref().map(|(a, c)| LogisticSets {
            adversarial: set(a),
            clean: set(c),
        }),
    };
    let t0 = std::time::Instant::now();
    // KD-BU's dropout masks, MagNet's initialisation, batches and noise (any draw of the fit)
    // come from libtorch's generator: seeded, so the same command writes the same detector.
    tch::manual_seed(args.seed);
    det.fit_classic(&cfg, data, args.batch_size, device)?;
    if fit.is_some() {
        out.note(format!("fitted in {:.1} s", t0.elapsed().as_secs_f64()));
    }
    Ok(det)
}

/// Feature squeezing's or MagNet's settings from their flags.
fn transform_config(args: &CalibrateArgs, kind: ClassicKind) -> anyhow::Result<TransformConfig> {
    Ok(match kind {
        ClassicKind::Squeeze => TransformConfig::Squeeze {
            squeezers: squeeze::parse_squeezers(
                args.squeezers.as_deref().unwrap_or("bits-1,median-2x2"),
            )?,
        },
        _ => {
            let d = magnet::MagnetConfig::default();
            TransformConfig::Magnet(magnet::MagnetConfig {
                detectors: match &args.magnet_detectors {
                    Some(l) => magnet::parse_detectors(l)?,
                    None => d.detectors,
                },
                reformer: args.reformer,
                epochs: args.ae_epochs.unwrap_or(d.epochs),
                lr: args.ae_lr.unwrap_or(d.lr),
                noise: args.ae_noise.unwrap_or(d.noise),
                batch_size: args.ae_batch_size.unwrap_or(d.batch_size),
            })
        }
    })
}
