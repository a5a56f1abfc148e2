//! The experiment file of `libre evaluate` (TOML; docs/experiments/mnist.toml is a complete,
//! commented example). Parsed strictly: unknown keys, unknown attacks or scores, missing weights
//! and scores a model cannot give are errors that name the line, raised before any work starts.

use crate::detect::Score;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// The example shipped with libre (`libre evaluate --example`).
pub const EXAMPLE_MNIST: &str = include_str!("../../docs/experiments/mnist.toml");

/// The experiment `libre quickstart` evaluates: the zoo LeNet5 (DNN) against the LiBRe model
/// at `model`, on the first `test_images` MNIST test digits, under FGSM, PGD, CW and the
/// adaptive selective attack at eps 0.3.
pub fn quickstart_mnist(model: &std::path::Path, test_images: usize) -> String {
    format!(
        r#"title = "libre quickstart: zoo LeNet5 (DNN) vs LiBRe on MNIST"
data = "mnist:test[0:{test_images}]"
seed = 0
bootstrap = 200
[[model]]
name = "dnn"
weights = "zoo:lenet5-mnist"
scores = ["msp", "entropy", "max-logit"]
[[model]]
name = "libre"
weights = "{}"
scores = ["feature-variance", "softmax-variance", "mutual-information", "msp"]
[[attack]]
name = "fgsm"
eps = [0.3]
[[attack]]
name = "pgd"
eps = [0.3]
steps = 40
step_size = 0.01
[[attack]]
name = "cw"
eps = [0.3]
steps = 40
step_size = 0.01
# The adaptive attacker: knows each model's first score and its threshold (5% FPR of the clean
# rows), ascends the loss until the digit is misclassified, then descends the score.
[[attack]]
name = "selective"
eps = [0.3]
steps = 100
step_size = 0.01
params = {{ restarts = 1 }}
"#,
        model.display()
    )
}
/// The committed adaptive experiment (docs/experiments/mnist-adaptive.toml).
pub const EXAMPLE_ADAPTIVE: &str = include_str!("../../docs/experiments/mnist-adaptive.toml");

/// Which samples enter the detection metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubsetSpec {
    #[default]
    All,
    Successful,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Data spec with an optional slice, e.g. `mnist:test[0:1000]`.
    pub data: Spanned<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub subset: SubsetSpec,
    /// Bootstrap resamples for the 95% AUROC intervals (0 = none).
    #[serde(default)]
    pub bootstrap: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// The false-positive rate that fixes, once from each detector's clean rows, the threshold
    /// of a detector without a calibrated one (robust detection metrics and adaptive attacks).
    #[serde(default)]
    pub fpr: Option<Spanned<f64>>,
    #[serde(rename = "model")]
    pub models: Vec<ModelSpec>,
    #[serde(rename = "attack", default)]
    pub attacks: Vec<AttackSpec>,
}

fn default_batch() -> usize {
    250
}

/// The default target FPR of thresholds fixed from clean rows.
pub const DEFAULT_FPR: f64 = 0.05;

/// The `adaptive` key of an attack: mimicry weights, or the name of a preset suite.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum AdaptiveSpec {
    /// One attack per C, ascending loss - C * score.
    Weights(Vec<f64>),
    /// `"strong"`: [`STRONG_SUITE`].
    Preset(String),
}

impl Default for AdaptiveSpec {
    fn default() -> Self {
        AdaptiveSpec::Weights(Vec::new())
    }
}

/// The attacks `adaptive = "strong"` expands to: (registry name, mimicry C, label). Every one
/// knows the detector's threshold, runs `steps` (default 200) per restart, 2 restarts, a
/// halving step and per-image early stop; the log-score mimicry only for scores that are
/// positive by construction (`log` of any other score is not defined).
pub const STRONG_SUITE: &[(&str, f64, &str)] = &[
    ("pgd-restarts", 0.0, "pgd-restarts"),
    ("mimicry", 10.0, "mimicry-10"),
    ("mimicry", 100.0, "mimicry-100"),
    ("mimicry", 1000.0, "mimicry-1000"),
    ("mimicry-log", 1.0, "mimicry-log-1"),
    ("mimicry-log", 10.0, "mimicry-log-10"),
    ("selective", 0.0, "selective"),
    ("orthogonal", 0.0, "orthogonal"),
];

/// The preset's steps when the entry sets none, and its step as a fraction of eps when it sets
/// no `step_size` (a halving schedule then covers eps many times in the first quarter).
pub const STRONG_STEPS: usize = 200;
pub const STRONG_STEP_FRACTION: f64 = 0.1;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: Spanned<String>,
    pub weights: Spanned<String>,
    pub scores: Spanned<Vec<String>>,
    #[serde(default)]
    pub mc_samples: Option<usize>,
    /// `f32` (default) or `bf16`: the precision the model is attacked and scored at
    /// (docs/design.md section 15).
    #[serde(default)]
    pub precision: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackSpec {
    /// A registry attack name (`fgsm`, `pgd`, `cw`, `spsa`, ...).
    pub name: Spanned<String>,
    /// Name in the tables [default: the attack name; `-transfer`/`-adaptive-C` appended].
    #[serde(default)]
    pub label: Option<String>,
    pub eps: Vec<f64>,
    #[serde(default)]
    pub steps: Option<usize>,
    #[serde(default)]
    pub step_size: Option<f64>,
    /// Further attack settings (registry keys, e.g. `random_start = false`, `decay = 1.0`).
    #[serde(default)]
    pub params: toml::Table,
    /// Mimicry: one cell per C, ascending loss - C * score (the model's first score by default);
    /// or `"strong"`: the whole adaptive suite ([`STRONG_SUITE`]).
    #[serde(default)]
    pub adaptive: AdaptiveSpec,
    #[serde(default)]
    pub adaptive_score: Option<String>,
    /// Transfer attack: craft on this model (weights), evaluate on each target.
    #[serde(default)]
    pub surrogate: Option<String>,
    /// Attack only these models [default: all].
    #[serde(default)]
    pub models: Option<Vec<String>>,
}

/// The 1-based line of a byte offset in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// One validated model of the experiment.
#[derive(Debug, Clone, Serialize)]
pub struct ModelPlan {
    pub name: String,
    pub weights: String,
    pub scores: Vec<Score>,
    /// MC samples (1 = DNN).
    pub samples: usize,
    /// The classic detector fitted into the weights file, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classic: Option<crate::detect::classic::ClassicKind>,
    /// The precision it is attacked and scored at.
    #[serde(skip_serializing_if = "is_f32")]
    pub precision: crate::runtime::precision::Precision,
}

fn is_f32(p: &crate::runtime::precision::Precision) -> bool {
    *p == crate::runtime::precision::Precision::F32
}

/// One validated attack configuration (an adaptive C is its own configuration).
#[derive(Debug, Clone, Serialize)]
pub struct AttackPlan {
    pub label: String,
    pub name: String,
    /// Registry parameters without eps (added per cell).
    pub params: serde_json::Value,
    /// The attack sees a detector score (the model's first unless given): mimicry's C (0 for
    /// the adaptive attacks that weigh nothing).
    pub adaptive: Option<(f64, Option<Score>)>,
    /// The step is this fraction of each cell's eps (the strong preset without `step_size`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_fraction: Option<f64>,
    pub surrogate: Option<String>,
    pub eps: Vec<f64>,
    pub models: Vec<String>,
}

/// An experiment checked against the registry, the zoo and the checkpoints.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentPlan {
    pub data: String,
    pub title: String,
    pub seed: u64,
    pub subset: SubsetSpec,
    pub bootstrap: usize,
    pub batch_size: usize,
    /// Target FPR of the thresholds fixed from clean rows.
    pub fpr: f64,
    pub models: Vec<ModelPlan>,
    pub attacks: Vec<AttackPlan>,
}

/// A model name or attack label: letters, digits, '-', '_', '.', and no "__", which separates
/// the parts of a cell id (`MODEL__ATTACK__EPS`), so that two cells never share a file.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && !s.contains("__")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// What a weights file can score: its MC sample count (1 for a DNN) and the classic detector
/// fitted into it, from the metadata alone.
fn capabilities_of(
    weights: &str,
    requested: Option<usize>,
) -> Result<(usize, Option<crate::detect::classic::ClassicKind>)> {
    let path = if let Some(name) = weights.strip_prefix("zoo:") {
        let m = crate::weights::zoo::find(name)
            .ok_or_else(|| Error::invalid(format!("unknown zoo model '{name}'")))?;
        let p = crate::weights::zoo::checkpoint_path(m);
        if !p.exists() {
            // Zoo models are point networks; they are fetched when the run starts.
            let s = crate::models::mc_sample_count(weights, None, None, requested)?;
            return Ok((s, None));
        }
        p
    } else {
        std::path::PathBuf::from(weights)
    };
    if !path.exists() {
        return Err(Error::invalid(format!(
            "weights file {} does not exist",
            path.display()
        )));
    }
    let meta = crate::weights::checkpoint::read_meta(&path)?;
    let det: Option<crate::detect::DetectorMeta> =
        crate::weights::checkpoint::read_extra(&path, crate::detect::detector::DETECTOR_KEY)?
            .map(|j| serde_json::from_str(&j))
            .transpose()
            .map_err(|e| Error::bad_file(&path, format!("bad detector metadata: {e}")))?;
    let classic = det
        .as_ref()
        .and_then(|d| d.classic.as_ref())
        .map(|c| c.config.kind());
    // MC dropout draws any number of masks, by default the detector file's S.
    let dropout = det
        .as_ref()
        .filter(|d| d.mc_dropout.is_some())
        .map(|d| d.samples);
    let s = crate::models::mc_sample_count(
        meta.model.arch.name(),
        meta.posterior.as_ref(),
        dropout,
        requested,
    )?;
    Ok((s, classic))
}

/// Whether a model with `samples` MC samples and a fitted `classic` detector gives `sc`.
fn check_score(
    sc: Score,
    samples: usize,
    classic: Option<crate::detect::classic::ClassicKind>,
) -> Result<()> {
    match (sc.classic(), classic) {
        (Some(k), Some(c)) if k == c => Ok(()),
        _ => sc.check_available(samples),
    }
}

fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

impl Experiment {
    /// Parses and validates `text`; errors name the line.
    pub fn parse(text: &str) -> Result<ExperimentPlan> {
        let e: Experiment = toml::from_str(text)
            .map_err(|err| Error::invalid(format!("experiment file: {err}")))?;
        e.validate(text)
    }

    fn validate(&self, text: &str) -> Result<ExperimentPlan> {
        let at = |span: std::ops::Range<usize>, msg: String| {
            Error::invalid(format!(
                "experiment file, line {}: {msg}",
                line_of(text, span.start)
            ))
        };
        let (base, _) = crate::data::split_slice(self.data.get_ref())
            .map_err(|err| at(self.data.span(), err.to_string()))?;
        base.parse::<crate::data::DataSpec>()
            .map_err(|err| at(self.data.span(), err.to_string()))?;
        if self.batch_size == 0 {
            return Err(Error::invalid(
                "experiment file: batch_size must be at least 1",
            ));
        }
        if self.models.is_empty() {
            return Err(Error::invalid("experiment file: no [[model]]"));
        }
        if self.attacks.is_empty() {
            return Err(Error::invalid(
                "experiment file: no [[attack]]: an evaluation scores clean against attacked \
                 images, so it needs at least one attack",
            ));
        }
        if self.bootstrap > 0 {
            libre_reports::bootstrap::BootstrapConfig {
                n_resamples: self.bootstrap,
                seed: self.seed,
                level: 0.95,
            }
            .validate()
            .map_err(|e| Error::invalid(format!("experiment file: bootstrap: {e}")))?;
        }
        let mut models = Vec::new();
        for m in &self.models {
            let name = m.name.get_ref();
            if !valid_name(name) {
                return Err(at(
                    m.name.span(),
                    format!("model name '{name}': use letters, digits, '-', '_' or '.' (no '__')"),
                ));
            }
            if models.iter().any(|x: &ModelPlan| &x.name == name) {
                return Err(at(
                    m.name.span(),
                    format!("model name '{name}' appears twice"),
                ));
            }
            let (samples, classic) = capabilities_of(m.weights.get_ref(), m.mc_samples)
                .map_err(|err| at(m.weights.span(), err.to_string()))?;
            let mut scores = Vec::new();
            for s in m.scores.get_ref() {
                let sc: Score = s
                    .parse()
                    .map_err(|err: Error| at(m.scores.span(), err.to_string()))?;
                check_score(sc, samples, classic)
                    .map_err(|err| at(m.scores.span(), format!("model '{name}': {err}")))?;
                if scores.contains(&sc) {
                    return Err(at(m.scores.span(), format!("score '{s}' listed twice")));
                }
                scores.push(sc);
            }
            if scores.is_empty() {
                return Err(at(m.scores.span(), format!("model '{name}' has no scores")));
            }
            let precision = match &m.precision {
                Some(p) => {
                    let v: crate::runtime::precision::Precision = p
                        .get_ref()
                        .parse()
                        .map_err(|err: Error| at(p.span(), err.to_string()))?;
                    if classic.is_some() && v != crate::runtime::precision::Precision::F32 {
                        return Err(at(
                            p.span(),
                            format!(
                                "model '{name}': classic detectors are fitted and scored at f32"
                            ),
                        ));
                    }
                    v
                }
                None => Default::default(),
            };
            models.push(ModelPlan {
                name: name.clone(),
                weights: m.weights.get_ref().clone(),
                scores,
                samples,
                classic,
                precision,
            });
        }
        let fpr = match &self.fpr {
            Some(f) => {
                let v = *f.get_ref();
                if !(v > 0.0 && v < 1.0) {
                    return Err(at(
                        f.span(),
                        format!("fpr = {v}: the target false-positive rate must lie in (0, 1)"),
                    ));
                }
                v
            }
            None => DEFAULT_FPR,
        };
        let mut attacks: Vec<AttackPlan> = Vec::new();
        for a in &self.attacks {
            let name = a.name.get_ref();
            if !libre_attacks::ATTACK_NAMES.contains(&name.as_str()) {
                return Err(at(
                    a.name.span(),
                    format!(
                        "unknown attack '{name}': available {}",
                        libre_attacks::ATTACK_NAMES.join(", ")
                    ),
                ));
            }
            let (weights, preset) = match &a.adaptive {
                AdaptiveSpec::Weights(w) => (w.clone(), false),
                AdaptiveSpec::Preset(p) if p == "strong" => {
                    if name != "pgd" && name != "pgd-l2" {
                        return Err(at(
                            a.name.span(),
                            format!(
                                "adaptive = \"strong\" expands from `pgd` (l_inf) or `pgd-l2`, \
                                 not '{name}'"
                            ),
                        ));
                    }
                    (Vec::new(), true)
                }
                AdaptiveSpec::Preset(p) => {
                    return Err(at(
                        a.name.span(),
                        format!(
                            "adaptive = \"{p}\": the preset is \"strong\" (or give a list of \
                             mimicry weights C)"
                        ),
                    ))
                }
            };
            let mut params = serde_json::Map::new();
            for (k, v) in &a.params {
                if k == "eps" {
                    return Err(at(
                        a.name.span(),
                        "put eps in the eps list, not in params".into(),
                    ));
                }
                if k == "threshold" {
                    return Err(at(
                        a.name.span(),
                        "the threshold is fixed once from clean data (the detector's \
                         calibration, or `fpr` of its clean rows), never per attack"
                            .into(),
                    ));
                }
                params.insert(k.clone(), toml_to_json(v));
            }
            if let Some(s) = a.steps {
                params.insert("steps".into(), serde_json::json!(s));
            }
            if let Some(s) = a.step_size {
                params.insert("step_size".into(), serde_json::json!(s));
            }
            if a.eps.is_empty() {
                return Err(at(a.name.span(), format!("attack '{name}' has no eps")));
            }
            for (i, &e) in a.eps.iter().enumerate() {
                // Pixels are in [0, 1]: eps 1 already allows the whole box (l_inf), and the l_2
                // per-coordinate eps 1 its whole diagonal.
                if !(0.0..=1.0).contains(&e) {
                    return Err(at(
                        a.name.span(),
                        format!("attack '{name}': eps {e} must be a number in [0, 1]"),
                    ));
                }
                if a.eps[..i].contains(&e) {
                    return Err(at(
                        a.name.span(),
                        format!("attack '{name}': eps {e} is listed twice"),
                    ));
                }
            }
            for &c in &weights {
                if !(c.is_finite() && c >= 0.0) {
                    return Err(at(
                        a.name.span(),
                        format!("adaptive C {c} must be a finite number >= 0"),
                    ));
                }
            }
            let targets: Vec<String> = match &a.models {
                Some(v) => {
                    for t in v {
                        if !models.iter().any(|m| &m.name == t) {
                            return Err(at(
                                a.name.span(),
                                format!("attack '{name}': no model named '{t}'"),
                            ));
                        }
                    }
                    v.clone()
                }
                None => models.iter().map(|m| m.name.clone()).collect(),
            };
            let detector_attack = preset
                || !weights.is_empty()
                || libre_attacks::ADAPTIVE_NAMES.contains(&name.as_str());
            if let Some(sur) = &a.surrogate {
                capabilities_of(sur, None)
                    .map_err(|err| at(a.name.span(), format!("surrogate: {err}")))?;
                if detector_attack {
                    return Err(at(
                        a.name.span(),
                        "an adaptive attack cannot use a surrogate".into(),
                    ));
                }
            }
            let base = a.label.clone().unwrap_or_else(|| {
                if a.surrogate.is_some() {
                    format!("{name}-transfer")
                } else {
                    name.clone()
                }
            });
            if !valid_name(&base) {
                return Err(at(
                    a.name.span(),
                    format!(
                        "attack label '{base}': use letters, digits, '-', '_' or '.' (no '__')"
                    ),
                ));
            }
            let score = match &a.adaptive_score {
                Some(s) => Some(
                    s.parse::<Score>()
                        .map_err(|err| at(a.name.span(), err.to_string()))?,
                ),
                None => None,
            };
            // The score each target is attacked through.
            let attacked: Vec<Score> = targets
                .iter()
                .map(|t| {
                    let m = models.iter().find(|m| &m.name == t).expect("checked");
                    score.unwrap_or(m.scores[0])
                })
                .collect();
            // (label, registry name, params, adaptive, step fraction)
            type Variant = (
                String,
                String,
                serde_json::Map<String, serde_json::Value>,
                Option<(f64, Option<Score>)>,
                Option<f64>,
            );
            let mut variants: Vec<Variant> = Vec::new();
            if preset {
                let positive = attacked.iter().all(|s| s.is_positive());
                for &(reg, c, label) in STRONG_SUITE {
                    if reg == "mimicry-log" && !positive {
                        continue;
                    }
                    let mut p = params.clone();
                    if name == "pgd-l2" {
                        p.insert("norm".into(), serde_json::json!("l2"));
                    }
                    p.entry("steps")
                        .or_insert_with(|| serde_json::json!(STRONG_STEPS));
                    let frac = (!p.contains_key("step_size")).then_some(STRONG_STEP_FRACTION);
                    let label = match &a.label {
                        Some(l) => format!("{l}-{label}"),
                        None => label.to_string(),
                    };
                    variants.push((label, reg.to_string(), p, Some((c, score)), frac));
                }
            } else if weights.is_empty() {
                let adaptive = libre_attacks::ADAPTIVE_NAMES
                    .contains(&name.as_str())
                    .then(|| {
                        let c = params.get("adaptive_c").and_then(|v| v.as_f64());
                        let default = if name.starts_with("mimicry") {
                            1.0
                        } else {
                            0.0
                        };
                        (c.unwrap_or(default), score)
                    });
                variants.push((base.clone(), name.clone(), params.clone(), adaptive, None));
            } else {
                if libre_attacks::ADAPTIVE_NAMES.contains(&name.as_str())
                    && !name.starts_with("mimicry")
                {
                    return Err(at(
                        a.name.span(),
                        format!("adaptive weights C apply to mimicry; '{name}' weighs nothing"),
                    ));
                }
                for &c in &weights {
                    variants.push((
                        format!("{base}-adaptive-{c}"),
                        name.clone(),
                        params.clone(),
                        Some((c, score)),
                        None,
                    ));
                }
            }
            for (label, reg, params, adaptive, step_fraction) in variants {
                // Every cell's settings must build before any work starts.
                for &e in &a.eps {
                    let mut p = params.clone();
                    p.insert("eps".into(), serde_json::json!(e));
                    if let Some(f) = step_fraction {
                        p.insert("step_size".into(), serde_json::json!(e * f));
                    }
                    if let Some((c, _)) = adaptive {
                        p.insert("adaptive_c".into(), serde_json::json!(c));
                    }
                    libre_attacks::by_name(&reg, &serde_json::Value::Object(p))
                        .map_err(|err| at(a.name.span(), err.to_string()))?;
                }
                if attacks.iter().any(|x| x.label == label) {
                    return Err(at(
                        a.name.span(),
                        format!("attack label '{label}' appears twice (set label = ...)"),
                    ));
                }
                if let Some((_, sc)) = adaptive {
                    for t in &targets {
                        let m = models.iter().find(|m| &m.name == t).expect("checked");
                        let s = sc.unwrap_or(m.scores[0]);
                        check_score(s, m.samples, m.classic)
                            .map_err(|err| at(a.name.span(), format!("model '{t}': {err}")))?;
                    }
                }
                attacks.push(AttackPlan {
                    label,
                    name: reg,
                    params: serde_json::Value::Object(params),
                    adaptive,
                    step_fraction,
                    surrogate: a.surrogate.clone(),
                    eps: a.eps.clone(),
                    models: targets.clone(),
                });
            }
        }
        Ok(ExperimentPlan {
            data: self.data.get_ref().clone(),
            title: self
                .title
                .clone()
                .unwrap_or_else(|| "libre evaluation".into()),
            seed: self.seed,
            subset: self.subset,
            bootstrap: self.bootstrap,
            batch_size: self.batch_size,
            fpr,
            models,
            attacks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
data = "mnist:test[0:100]"
[[model]]
name = "dnn"
weights = "zoo:lenet5-mnist"
scores = ["msp", "entropy"]
[[attack]]
name = "pgd"
eps = [0.1, 0.3]
steps = 10
step_size = 0.05
[[attack]]
name = "fgsm"
eps = [0.3]
adaptive = [1.0, 10.0]
"#;

    #[test]
    fn parses_a_valid_experiment() {
        let p = Experiment::parse(OK).unwrap();
        assert_eq!(p.models[0].scores, vec![Score::Msp, Score::Entropy]);
        let labels: Vec<&str> = p.attacks.iter().map(|a| a.label.as_str()).collect();
        assert_eq!(labels, ["pgd", "fgsm-adaptive-1", "fgsm-adaptive-10"]);
        assert_eq!(p.attacks[0].params["steps"], 10);
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            (OK.replace("steps = 10", "stepz = 10"), "line 10", "stepz"),
            (
                OK.replace("name = \"pgd\"", "name = \"pgdx\""),
                "line 8",
                "pgdx",
            ),
            (
                OK.replace("\"msp\", \"entropy\"", "\"msp\", \"feature-variance\""),
                "line 6",
                "feature-variance",
            ),
            (
                OK.replace("zoo:lenet5-mnist", "/nonexistent.safetensors"),
                "line 5",
                "does not exist",
            ),
            (
                OK.replace("mnist:test[0:100]", "mnist:tset"),
                "line 2",
                "tset",
            ),
        ];
        for (text, line, what) in cases {
            let e = Experiment::parse(&text).unwrap_err().to_string();
            assert!(e.contains(line) && e.contains(what), "{line} {what}: {e}");
        }
    }

    #[test]
    fn the_strong_preset_expands_to_the_suite_with_thresholds_left_to_the_run() {
        let text = OK.replace(
            "[[attack]]\nname = \"fgsm\"\neps = [0.3]\nadaptive = [1.0, 10.0]\n",
            "[[attack]]\nname = \"pgd\"\neps = [0.1, 0.3]\nadaptive = \"strong\"\n",
        );
        let p = Experiment::parse(&text).unwrap();
        let labels: Vec<&str> = p.attacks.iter().map(|a| a.label.as_str()).collect();
        // msp is not positive by construction: no log-score mimicry.
        assert_eq!(
            labels,
            [
                "pgd",
                "pgd-restarts",
                "mimicry-10",
                "mimicry-100",
                "mimicry-1000",
                "selective",
                "orthogonal"
            ]
        );
        let sel = &p.attacks[5];
        assert_eq!(sel.name, "selective");
        assert_eq!(sel.params["steps"], STRONG_STEPS);
        assert_eq!(sel.step_fraction, Some(STRONG_STEP_FRACTION));
        assert_eq!(p.attacks[3].adaptive.map(|a| a.0), Some(100.0));
        assert_eq!(p.fpr, DEFAULT_FPR);
        // A positive score brings the log form.
        let text = text.replace("\"msp\", \"entropy\"", "\"entropy\", \"msp\"");
        let p = Experiment::parse(&text).unwrap();
        assert!(p.attacks.iter().any(|a| a.label == "mimicry-log-10"));
    }

    #[test]
    fn adaptive_settings_are_checked_before_any_work() {
        let strong = |extra: &str| {
            OK.replace(
                "adaptive = [1.0, 10.0]\n",
                &format!("adaptive = [1.0, 10.0]\n{extra}"),
            )
        };
        let cases = [
            (
                OK.replace("adaptive = [1.0, 10.0]", "adaptive = [-1.0]"),
                ">= 0",
            ),
            (
                OK.replace("adaptive = [1.0, 10.0]", "adaptive = \"strongest\""),
                "strongest",
            ),
            (
                OK.replace("adaptive = [1.0, 10.0]", "adaptive = \"strong\""),
                "`pgd`",
            ),
            (
                strong("params = { threshold = 0.1 }\n"),
                "fixed once from clean data",
            ),
            (
                OK.replace("name = \"fgsm\"", "name = \"selective\""),
                "weighs nothing",
            ),
            (OK.replace("data = ", "fpr = 1.5\ndata = "), "fpr = 1.5"),
            (
                OK.replace("eps = [0.1, 0.3]", "eps = [0.3, 0.3]"),
                "listed twice",
            ),
            (OK.replace("eps = [0.1, 0.3]", "eps = [nan]"), "[0, 1]"),
            (OK.replace("eps = [0.1, 0.3]", "eps = [1e308]"), "[0, 1]"),
            (
                OK.replace("name = \"fgsm\"", "name = \"fgsm\"\nlabel = \"fgsm__0.3\""),
                "no '__'",
            ),
            (
                OK.replace("data = ", "bootstrap = 1000000000\ndata = "),
                "bootstrap",
            ),
            (
                OK[..OK.find("[[attack]]").unwrap()].to_string(),
                "no [[attack]]",
            ),
            (OK.replace("steps = 10", "steps = 1000000000"), "steps"),
            (
                OK.replace("steps = 10", "steps = 1000000000")
                    .replace("name = \"pgd\"", "name = \"pgd-restarts\""),
                "steps",
            ),
        ];
        for (text, what) in cases {
            let e = Experiment::parse(&text).unwrap_err().to_string();
            assert!(e.contains(what), "{what}: {e}");
        }
    }

    /// The quick start's experiment is a valid experiment file (its model is written later).
    #[test]
    fn the_quickstart_experiment_is_valid_toml() {
        let text = quickstart_mnist(std::path::Path::new("runs/q/libre/model.safetensors"), 10);
        let e: Experiment = toml::from_str(&text).unwrap();
        assert_eq!(e.models.len(), 2);
    }

    #[test]
    fn the_shipped_example_is_valid_toml() {
        // Its weights may not exist yet (it names a run directory); the syntax must parse.
        let _: Experiment = toml::from_str(EXAMPLE_MNIST).unwrap();
        let _: Experiment = toml::from_str(EXAMPLE_ADAPTIVE).unwrap();
    }
}
