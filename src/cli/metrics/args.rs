//! The flags of `libre metrics`, with their help and the parsers of `--fpr` and `--threshold`.

use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// CSV of scores with a header row (label 1 = adversarial, 0 = clean).
    #[arg(long, value_name = "FILE.csv")]
    pub scores: PathBuf,
    /// Name of the label column.
    #[arg(long, value_name = "COL", default_value = "label")]
    pub label_col: String,
    /// Name of the score column (higher = more suspicious).
    #[arg(long, value_name = "COL", default_value = "score")]
    pub score_col: String,
    /// Compute the metrics separately for each value of this column (e.g. attack).
    #[arg(long, value_name = "COL")]
    pub group_by: Option<String>,
    /// Bootstrap confidence intervals (95%, percentile, stratified) from N resamples; with
    /// --robust, intervals of evaded % from N resamples of the images.
    #[arg(long, value_name = "N")]
    pub bootstrap: Option<usize>,
    /// Seed of the bootstrap.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Which rows count: `all`, or `successful` (successful attacks on correctly classified
    /// clean inputs; needs the columns clean_correct and adv_success).
    #[arg(long, value_name = "SUBSET", default_value = "all",
          value_parser = ["all", "successful"])]
    pub subset: String,
    /// Print the robust-detection table instead of the AUROC table: per detector x attack x
    /// eps, at one threshold fixed once (flagged = score >= threshold), attack success %,
    /// flagged %, evaded % (misclassified and not flagged), robust detection accuracy (100 -
    /// evaded) and per eps the worst case per image over the attacks and the clean image, with
    /// the AUROC against the detector's clean rows beside them. Needs the columns image, attack
    /// (`clean` rows are the clean inputs), correct (0/1: the classifier is right on that row's
    /// input), the --score-col and --detector-col columns, and eps if present (libre
    /// evaluate's scores.csv has them all). Threshold: --threshold, else --fpr (0.05).
    #[arg(long, conflicts_with_all = ["group_by", "subset", "label_col"])]
    pub robust: bool,
    /// With --robust: one score threshold T for every detector and attack.
    #[arg(long, value_name = "T", requires = "robust", conflicts_with = "fpr",
          allow_negative_numbers = true, value_parser = parse_threshold)]
    pub threshold: Option<f64>,
    /// With --robust: per detector, the threshold at false-positive rate F (in (0, 1)) of that
    /// detector's clean rows, fixed once and used for every attack and eps [default: 0.05].
    #[arg(long, value_name = "F", requires = "robust", allow_negative_numbers = true,
          value_parser = parse_fpr)]
    pub fpr: Option<f64>,
    /// With --robust: the column naming the detector (one threshold per detector; libre
    /// evaluate's `model` column is MODEL/SCORE).
    #[arg(long, value_name = "COL", default_value = "model", requires = "robust")]
    pub detector_col: String,
}

/// `--fpr`: a false-positive rate strictly inside (0, 1).
fn parse_fpr(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number; give a false-positive rate in (0, 1)"))?;
    if !(v > 0.0 && v < 1.0) {
        return Err(format!(
            "{v} is outside (0, 1); give a false-positive rate such as 0.05"
        ));
    }
    Ok(v)
}

/// `--threshold`: any finite number.
fn parse_threshold(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(format!("{v} is not finite; give a finite score threshold")),
        Err(_) => Err(format!("`{s}` is not a number")),
    }
}

impl Args {
    /// The bootstrap settings of `--bootstrap` / `--seed`, checked (None without `--bootstrap`).
    pub fn bootstrap_config(
        &self,
    ) -> Result<Option<libre_reports::bootstrap::BootstrapConfig>, libre_reports::ReportError> {
        let cfg = self
            .bootstrap
            .map(|n| libre_reports::bootstrap::BootstrapConfig {
                n_resamples: n,
                seed: self.seed,
                level: 0.95,
            });
        if let Some(c) = &cfg {
            c.validate()?;
        }
        Ok(cfg)
    }
}
