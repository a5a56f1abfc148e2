//! The refusals of `libre calibrate` and `libre detect` that are about flags (which detector a
//! flag belongs to, overlapping data, a threshold used off its S or precision), checked before
//! any work, naming the flags.

use super::CalibrateArgs;
use libre::detect::Detector;
use libre::runtime::precision::Precision;
use std::path::Path;

/// Flags that apply only to some detectors are refused with the others, by name, before any
/// work: silently ignoring `--bandwidth` on the default detector would hide a mistake.
pub(super) fn check_detector_flags(args: &CalibrateArgs) -> anyhow::Result<()> {
    // (flag, given, detectors it applies to)
    let flags: [(&str, bool, &[&str]); 17] = [
        (
            "--dropout",
            args.dropout.is_some(),
            &["mc-dropout", "bu", "kd-bu"],
        ),
        (
            "--dropout-p",
            args.dropout_p.is_some(),
            &["mc-dropout", "bu", "kd-bu"],
        ),
        (
            "--fit-data",
            args.fit_data.is_some(),
            &["kd", "kd-bu", "lid", "mahalanobis", "magnet"],
        ),
        (
            "--fit-adversarial",
            args.fit_adversarial.is_some(),
            &["kd-bu", "lid", "mahalanobis"],
        ),
        (
            "--fit-clean",
            args.fit_clean.is_some(),
            &["kd-bu", "lid", "mahalanobis"],
        ),
        ("--layers", args.layers.is_some(), &["lid", "mahalanobis"]),
        ("--bandwidth", args.bandwidth.is_some(), &["kd", "kd-bu"]),
        ("--lid-k", args.lid_k.is_some(), &["lid"]),
        ("--lid-reference", args.lid_reference.is_some(), &["lid"]),
        ("--noise", args.noise.is_some(), &["mahalanobis"]),
        ("--squeezers", args.squeezers.is_some(), &["squeeze"]),
        (
            "--magnet-detectors",
            args.magnet_detectors.is_some(),
            &["magnet"],
        ),
        ("--reformer", args.reformer, &["magnet"]),
        ("--ae-epochs", args.ae_epochs.is_some(), &["magnet"]),
        ("--ae-lr", args.ae_lr.is_some(), &["magnet"]),
        ("--ae-noise", args.ae_noise.is_some(), &["magnet"]),
        ("--ae-batch-size", args.ae_batch_size.is_some(), &["magnet"]),
    ];
    if !libre::detect::detector::is_detector(&args.detector) {
        return Ok(()); // the parser below names the detectors
    }
    let stray: Vec<String> = flags
        .iter()
        .filter(|(_, given, to)| *given && !to.contains(&args.detector.as_str()))
        .map(|(f, _, to)| format!("{f} (for {})", to.join(", ")))
        .collect();
    if !stray.is_empty() {
        anyhow::bail!(
            "--detector {} does not use {}: drop them, or choose the detector they belong to",
            args.detector,
            stray.join("; ")
        );
    }
    Ok(())
}

/// The smallest calibration set whose threshold is one of its scores at `fpr`: the threshold is
/// the k-th largest clean score with k = floor(fpr * n); with k = 0 (n < 1/fpr) it is merely
/// "above every score seen", its false-positive rate unmeasured (0 flagged of n, a 95% interval
/// reaching far above the target).
pub(super) fn min_calibration_images(fpr: f64) -> usize {
    let mut n = (1.0 / fpr).ceil().max(1.0) as usize;
    while ((fpr * n as f64).floor() as usize) < 1 {
        n += 1;
    }
    while n > 1 && ((fpr * (n - 1) as f64).floor() as usize) >= 1 {
        n -= 1;
    }
    n
}

/// A data spec's source and image range `[start, end)` (`usize::MAX`: to the end), for telling
/// whether two specs share images. Path sources compare by their resolved path.
fn spec_range(spec: &str, limit: Option<usize>) -> Option<(String, usize, usize)> {
    let (base, slice) = libre::data::split_slice(spec).ok()?;
    let parsed: libre::data::DataSpec = base.parse().ok()?;
    let source = match parsed {
        libre::data::DataSpec::Registry { name, split } => {
            format!("{name}:{}", split.unwrap_or_default())
        }
        libre::data::DataSpec::Cifar10 { dir, train } => {
            format!("cifar10:{}:{train}", crate::cli::resolved(&dir).display())
        }
        libre::data::DataSpec::Folder(dir) => {
            format!("folder:{}", crate::cli::resolved(&dir).display())
        }
        libre::data::DataSpec::BatchFile(p) => {
            format!("file:{}", crate::cli::resolved(&p).display())
        }
    };
    let (a, b) = slice.unwrap_or((None, None));
    let a = a.unwrap_or(0);
    let mut b = b.unwrap_or(usize::MAX);
    if let Some(l) = limit {
        b = b.min(a.saturating_add(l));
    }
    Some((source, a, b))
}

/// Refuses fit data that shares images with the calibration data: a classic detector scores
/// its own fit images unlike fresh ones, so the threshold would not hold.
pub(super) fn check_disjoint(fit: &str, data: &str, limit: Option<usize>) -> anyhow::Result<()> {
    let (Some((fs, fa, fb)), Some((ds, da, db))) = (spec_range(fit, None), spec_range(data, limit))
    else {
        return Ok(());
    };
    if fs == ds && fa.max(da) < fb.min(db) {
        let end = |e: usize| {
            if e == usize::MAX {
                String::new()
            } else {
                e.to_string()
            }
        };
        anyhow::bail!(
            "--fit-data {fit} and --data {data} share images [{}:{}]: the calibration data must \
             be disjoint from the fit data (e.g. --fit-data 'mnist:train[0:10000]' --data \
             'mnist:train[55000:60000]')",
            fa.max(da),
            end(fb.min(db))
        );
    }
    Ok(())
}

pub(super) fn comma_list(s: &Option<String>) -> Vec<String> {
    s.as_deref()
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The precision `libre detect` scores at: the one asked for, else the calibration's. A
/// calibrated threshold is refused at another precision (the scores move).
pub(super) fn detect_precision(
    det: &Detector,
    asked: Option<Precision>,
    own_threshold: bool,
) -> anyhow::Result<Precision> {
    let calibrated = det.meta().map(|m| m.precision);
    let p = asked.or(calibrated).unwrap_or_default();
    if let (Some(c), false) = (calibrated, own_threshold) {
        if c != p {
            anyhow::bail!(
                "--precision {p}: this detector was calibrated at {c} and its threshold holds only \
                 there; recalibrate with `libre calibrate --precision {p}`, or pass --threshold"
            );
        }
    }
    Ok(p)
}

/// A calibrated threshold holds at the S it was calibrated at: another `--mc-samples` moves the
/// scores (fewer samples, noisier spreads), so it is refused unless the user brings a threshold.
pub(super) fn check_samples(
    det: &Detector,
    asked: Option<usize>,
    own_threshold: bool,
) -> anyhow::Result<()> {
    if let (Some(m), Some(s), false) = (det.meta(), asked, own_threshold) {
        if s != m.samples {
            anyhow::bail!(
                "--mc-samples {s}: this detector was calibrated at S = {} and its threshold (and \
                 --fpr's stored scores) hold only there; drop --mc-samples, recalibrate with \
                 `libre calibrate --mc-samples {s}`, or pass --threshold",
                m.samples
            );
        }
    }
    Ok(())
}

/// An output file path, checked before any work: not a directory (nor a name ending in `/`).
pub(super) fn check_out_file(p: &Path) -> anyhow::Result<()> {
    if p.is_dir() || p.as_os_str().to_string_lossy().ends_with('/') {
        anyhow::bail!(
            "--out {}: is a directory; name a file, e.g. {}",
            p.display(),
            p.join("rows.csv").display()
        );
    }
    Ok(())
}
