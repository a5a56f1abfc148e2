//! libre checkpoints (issue "Checkpoints and import"; docs/design.md section 2 for what a
//! posterior holds): safetensors files whose metadata key `"libre"` holds a JSON
//! [`CheckpointMeta`]: the architecture and its options, the posterior (family, options, converted
//! layers, S) and the libre version. `load` rebuilds the model and its conversion from the metadata alone, so
//! `--weights FILE` needs no other flag.
//!
//! Tensor names are the VarStore names (`layer4.2.conv1.weight`, `..._psi`, `..._members`), so
//! a point model's file is a torchvision-style state_dict. Writes are atomic (a temporary file in
//! the same directory, then a rename); nothing is written when a weight is not finite.

use crate::bayes::LayerSelection;
use crate::models::{self, BayesModel, ModelConfig, PosteriorMeta};
use crate::{Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The checkpoint format this build writes and reads.
pub const FORMAT: u32 = 1;
/// The safetensors metadata key holding the JSON [`CheckpointMeta`].
pub const META_KEY: &str = "libre";

/// What a checkpoint says about its model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format: u32,
    pub model: ModelConfig,
    pub posterior: Option<PosteriorMeta>,
    pub libre_version: String,
}

impl CheckpointMeta {
    pub fn of(model: &dyn BayesModel) -> Self {
        CheckpointMeta {
            format: FORMAT,
            model: model.config().clone(),
            posterior: model.posterior().cloned(),
            libre_version: crate::VERSION.to_string(),
        }
    }
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        k => {
            return Err(Error::Checkpoint(format!(
                "cannot store tensors of kind {k:?}"
            )))
        }
    })
}

fn kind_of(d: Dtype) -> Result<Kind> {
    Ok(match d {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        d => {
            return Err(Error::Checkpoint(format!(
                "unsupported safetensors dtype {d:?}"
            )))
        }
    })
}

/// A CPU copy of a tensor as raw little-endian bytes.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Raw {
    fn of(t: &Tensor) -> Result<Raw> {
        let t = t.detach().to_device(Device::Cpu).contiguous();
        let numel = t.numel();
        let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut data, numel)?;
        Ok(Raw {
            dtype: dtype_of(t.kind())?,
            shape: t.size().iter().map(|&d| d as usize).collect(),
            data,
        })
    }
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Names of floating-point tensors holding NaN or infinity.
fn non_finite(tensors: &[(String, Tensor)]) -> Vec<String> {
    tensors
        .iter()
        .filter(|(_, t)| t.is_floating_point() && t.isfinite().all().int64_value(&[]) == 0)
        .map(|(n, _)| n.clone())
        .collect()
}

fn sorted_vars(model: &dyn BayesModel) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = model.var_store().variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Names of tensors that are not model parameters (a fitted detector's state) start with this;
/// loading a model skips them.
pub const EXTRA_PREFIX: &str = "extra/";

/// Writes `model` to `path` atomically (temporary file in the same directory, then rename).
pub fn save(path: impl AsRef<Path>, model: &dyn BayesModel) -> Result<()> {
    save_with(path, model, &[], &[])
}

/// [`save`] with extra safetensors metadata entries (e.g. a detector's calibration). Readers of
/// plain checkpoints ignore them, so such a file is still a `--weights` checkpoint.
///
/// `tensors` are stored as `extra/NAME` beside the parameters (a fitted detector's state; read
/// them back with [`read_extra_tensors`]).
pub fn save_with(
    path: impl AsRef<Path>,
    model: &dyn BayesModel,
    extra: &[(&str, String)],
    tensors: &[(String, Tensor)],
) -> Result<()> {
    let path = path.as_ref();
    // bf16 weights would lose the float32 values for good.
    crate::models::require_f32(model, &format!("writing {}", path.display()))?;
    let mut vars = sorted_vars(model);
    vars.extend(
        tensors
            .iter()
            .map(|(n, t)| (format!("{EXTRA_PREFIX}{n}"), t.shallow_clone())),
    );
    let bad = non_finite(&vars);
    if !bad.is_empty() {
        return Err(Error::Checkpoint(format!(
            "refusing to write {}: non-finite values in {}",
            path.display(),
            bad.join(", ")
        )));
    }
    let raws: Vec<(String, Raw)> = vars
        .iter()
        .map(|(n, t)| Ok((n.clone(), Raw::of(t)?)))
        .collect::<Result<_>>()?;
    let meta = serde_json::to_string(&CheckpointMeta::of(model))
        .map_err(|e| Error::Checkpoint(format!("encoding metadata: {e}")))?;
    let mut info = HashMap::from([(META_KEY.to_string(), meta)]);
    for (k, v) in extra {
        info.insert(k.to_string(), v.clone());
    }
    let info = Some(info);
    let bytes = safetensors::tensor::serialize(raws.iter().map(|(n, r)| (n.as_str(), r)), &info)?;
    crate::cache::write_atomic(path, &bytes)
}

/// Reads the tensors (ordered by name) and the metadata of a libre checkpoint.
pub fn read(path: impl AsRef<Path>) -> Result<(CheckpointMeta, Vec<(String, Tensor)>)> {
    let (meta, tensors, _) = read_all(path.as_ref())?;
    Ok((meta, tensors))
}

/// [`read`] plus every safetensors metadata entry (the extra ones of [`save_with`] among them),
/// from one read of the file.
fn read_all(
    path: &Path,
) -> Result<(
    CheckpointMeta,
    Vec<(String, Tensor)>,
    HashMap<String, String>,
)> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let bad = |m: String| Error::bad_file(path, m);
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| Error::Missing {
        name: "arch",
        why: format!(
            "{}: not a safetensors file: {e}; a PyTorch .pt/.pth state_dict is read as an \
             architecture (it names none)",
            path.display()
        ),
    })?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| Error::Missing {
            name: "arch",
            why: format!(
                "{}: no '{META_KEY}' metadata: a plain state_dict, not a libre checkpoint; read \
                 it as one of {STATE_DICT_ARCHS}, or import it once into a libre checkpoint",
                path.display()
            ),
        })?;
    let meta: CheckpointMeta =
        serde_json::from_str(json).map_err(|e| bad(format!("bad '{META_KEY}' metadata: {e}")))?;
    if meta.format != FORMAT {
        return Err(bad(format!(
            "checkpoint format {} is not supported by this libre (format {FORMAT})",
            meta.format
        )));
    }
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut tensors: Vec<(String, Tensor)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let shape: Vec<i64> = v.shape().iter().map(|&d| d as i64).collect();
            let t = Tensor::f_from_data_size(v.data(), &shape, kind_of(v.dtype())?)?;
            Ok((n, t))
        })
        .collect::<Result<_>>()?;
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((meta, tensors, header.metadata().clone().unwrap_or_default()))
}

/// The `extra/` tensors of a file written by [`save_with`], by name without the prefix.
pub fn read_extra_tensors(path: impl AsRef<Path>) -> Result<HashMap<String, Tensor>> {
    let (_, tensors) = read(path)?;
    Ok(tensors
        .into_iter()
        .filter_map(|(n, t)| n.strip_prefix(EXTRA_PREFIX).map(|r| (r.to_string(), t)))
        .collect())
}

/// Reads one extra metadata entry (see [`save_with`]) without decoding the tensors.
pub fn read_extra(path: impl AsRef<Path>, key: &str) -> Result<Option<String>> {
    let path = path.as_ref();
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    use std::io::Read;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| Error::bad_file(path, "not a safetensors file: shorter than its header"))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return Err(Error::bad_file(
            path,
            format!("safetensors header of {n} bytes is implausible"),
        ));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|_| Error::bad_file(path, "not a safetensors file: truncated header"))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| Error::bad_file(path, format!("bad safetensors header: {e}")))?;
    Ok(v.get("__metadata__")
        .and_then(|m| m.get(key))
        .and_then(|x| x.as_str())
        .map(str::to_string))
}

/// Reads only the metadata.
pub fn read_meta(path: impl AsRef<Path>) -> Result<CheckpointMeta> {
    Ok(read(path)?.0)
}

/// Copies named tensors into the model's variables; every name must match one variable with the
/// same shape. Errors list missing, unexpected and wrongly shaped names, each by name.
/// Floating tensors are cast to the variable's kind (e.g. float64 state_dicts).
pub fn copy_into(model: &dyn BayesModel, tensors: &[(String, Tensor)], source: &str) -> Result<()> {
    let bad = non_finite(tensors);
    if !bad.is_empty() {
        return Err(Error::Checkpoint(format!(
            "{source}: non-finite values (NaN/inf) in {}",
            bad.join(", ")
        )));
    }
    let vars: BTreeMap<String, Tensor> = model.var_store().variables().into_iter().collect();
    let given: BTreeMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let missing: Vec<&str> = vars
        .keys()
        .map(String::as_str)
        .filter(|n| !given.contains_key(n))
        .collect();
    let unexpected: Vec<&str> = given
        .keys()
        .copied()
        .filter(|n| !vars.contains_key(*n))
        .collect();
    let shapes: Vec<String> = given
        .iter()
        .filter_map(|(n, t)| {
            let v = vars.get(*n)?;
            (v.size() != t.size())
                .then(|| format!("{n} (file {:?}, model {:?})", t.size(), v.size()))
        })
        .collect();
    if !missing.is_empty() || !unexpected.is_empty() || !shapes.is_empty() {
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!("missing: {}", missing.join(", ")));
        }
        if !unexpected.is_empty() {
            parts.push(format!("unexpected: {}", unexpected.join(", ")));
        }
        if !shapes.is_empty() {
            parts.push(format!("wrong shape: {}", shapes.join(", ")));
        }
        let posterior = model.posterior().map_or("point".to_string(), |p| {
            format!("{} on {}", p.config.family, p.layers.join(","))
        });
        return Err(Error::Checkpoint(format!(
            "{source} does not match a {} model ({posterior}): {}",
            model.config().arch,
            parts.join("; ")
        )));
    }
    let _guard = tch::no_grad_guard();
    for (n, t) in tensors {
        let mut v = vars[n].shallow_clone();
        v.f_copy_(&t.to_kind(v.kind()))?;
    }
    Ok(())
}

/// Loads a checkpoint, rebuilding the model (and its conversion) from the metadata.
pub fn load(
    path: impl AsRef<Path>,
    device: Device,
) -> Result<(Box<dyn BayesModel>, CheckpointMeta)> {
    let l = load_full(path, device)?;
    Ok((l.model, l.meta))
}

/// A checkpoint with what [`save_with`] stored beside the model, from one read of the file.
pub struct CheckpointContents {
    pub model: Box<dyn BayesModel>,
    pub meta: CheckpointMeta,
    /// The extra metadata entries by key (e.g. a detector's settings).
    pub extra: HashMap<String, String>,
    /// The `extra/` tensors by name without the prefix, on the CPU.
    pub extra_tensors: HashMap<String, Tensor>,
}

/// [`load`] that also returns the file's extra metadata and extra tensors (a detector file reads
/// its model, settings and fitted state in one read instead of three).
pub fn load_full(path: impl AsRef<Path>, device: Device) -> Result<CheckpointContents> {
    let path = path.as_ref();
    let (meta, tensors, mut extra) = read_all(path)?;
    extra.remove(META_KEY);
    let (extra_tensors, tensors): (Vec<_>, Vec<_>) = tensors
        .into_iter()
        .partition(|(n, _)| n.starts_with(EXTRA_PREFIX));
    let extra_tensors = extra_tensors
        .into_iter()
        .map(|(n, t)| (n[EXTRA_PREFIX.len()..].to_string(), t))
        .collect();
    let mut model = models::build(&meta.model, device)
        .map_err(|e| Error::bad_file(path, format!("metadata describes no valid model: {e}")))?;
    if let Some(p) = &meta.posterior {
        model
            .convert(&LayerSelection::Paths(p.layers.clone()), &p.config)
            .map_err(|e| Error::bad_file(path, format!("replaying the conversion: {e}")))?;
    }
    copy_into(model.as_ref(), &tensors, &path.display().to_string())?;
    Ok(CheckpointContents {
        model,
        meta,
        extra,
        extra_tensors,
    })
}

/// Loads a checkpoint into an existing model of the same architecture and posterior.
pub fn load_into(path: impl AsRef<Path>, model: &dyn BayesModel) -> Result<CheckpointMeta> {
    let path = path.as_ref();
    let (meta, mut tensors) = read(path)?;
    tensors.retain(|(n, _)| !n.starts_with(EXTRA_PREFIX));
    if meta.model.arch != model.config().arch {
        return Err(Error::Checkpoint(format!(
            "{} holds a {} model, not {}: give the matching architecture or none",
            path.display(),
            meta.model.arch,
            model.config().arch
        )));
    }
    if meta.model != *model.config() {
        return Err(Error::Checkpoint(format!(
            "{}: model options differ (file {:?}, model {:?})",
            path.display(),
            meta.model,
            model.config()
        )));
    }
    copy_into(model, &tensors, &path.display().to_string())?;
    Ok(meta)
}

/// Builds a point model of `cfg` from an imported PyTorch state_dict (`conv1.weight`, ...).
///
/// `num_batches_tracked` entries may be absent (older PyTorch); every other variable must be
/// present with its shape.
/// The architectures a plain state_dict can be read as (`--model ARCH`), with what is inferred.
pub const STATE_DICT_ARCHS: &str =
    "lenet5, digitcnn (advertorch's MNIST nets, raw [0, 1] pixels), \
     resnet18, resnet34, resnet50 (torchvision's names; classes and input channels read from the \
     tensors; a 7x7 stem means ImageNet inputs, 224 px with ImageNet normalisation inside the \
     model, a 3x3 stem CIFAR inputs, 32 px raw)";

/// The model configuration of a plain state_dict read as `arch` (see [`STATE_DICT_ARCHS`]).
pub fn state_dict_config(arch: &str, tensors: &[(String, Tensor)]) -> Result<ModelConfig> {
    let size = |name: &str| {
        tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.size())
            .ok_or_else(|| {
                Error::Checkpoint(format!(
                    "as {arch}: the state_dict has no tensor `{name}` (is it a {arch}?)"
                ))
            })
    };
    Ok(match arch {
        "lenet5" => ModelConfig::lenet5(),
        "digitcnn" => ModelConfig::digitcnn(),
        "resnet18" | "resnet34" | "resnet50" => {
            let fc = size("fc.weight")?;
            let stem = size("conv1.weight")?;
            let cifar = stem.get(2) == Some(&3);
            let depth = arch[6..].parse().expect("resnet depth");
            let mut cfg = ModelConfig::resnet(depth, fc[0], if cifar { 32 } else { 224 }, cifar);
            cfg.in_channels = stem[1];
            if cifar {
                cfg
            } else {
                cfg.with_imagenet_normalization()
            }
        }
        other => {
            return Err(Error::invalid(format!(
                "architecture '{other}': a plain state_dict can be read as {STATE_DICT_ARCHS}"
            )))
        }
    })
}

/// Loads a libre checkpoint, or, when `arch` is given and the file is a plain state_dict
/// (`libre import` without `--model`, or a PyTorch file), builds that architecture from it.
pub fn load_or_build(
    path: impl AsRef<Path>,
    arch: Option<&str>,
    device: Device,
) -> Result<(Box<dyn BayesModel>, Option<CheckpointMeta>)> {
    let path = path.as_ref();
    let arch = match arch {
        Some(a) if !is_libre_checkpoint(path) => a,
        // A libre checkpoint carries its architecture; anything else gets load's message.
        _ => return load(path, device).map(|(m, meta)| (m, Some(meta))),
    };
    let sd = crate::weights::import::load_state_dict(path)?.into_inner();
    let cfg = state_dict_config(arch, &sd)?;
    let model = from_state_dict(cfg, sd, device)
        .map_err(|e| Error::bad_file(path, format!("as {arch}: {e}")))?;
    Ok((model, None))
}

/// Whether `path` is a safetensors file with libre's metadata (cheap: reads the header only).
pub fn is_libre_checkpoint(path: &Path) -> bool {
    matches!(read_extra(path, META_KEY), Ok(Some(_)))
}

pub fn from_state_dict(
    cfg: ModelConfig,
    tensors: Vec<(String, Tensor)>,
    device: Device,
) -> Result<Box<dyn BayesModel>> {
    let model = models::build(&cfg, device)?;
    let names: Vec<String> = tensors.iter().map(|(n, _)| n.clone()).collect();
    let mut tensors = tensors;
    for (n, v) in model.var_store().variables() {
        if n.ends_with("num_batches_tracked") && !names.contains(&n) {
            tensors.push((n, v.copy()));
        }
    }
    copy_into(model.as_ref(), &tensors, "state_dict")?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One read gives the model, the extra metadata and the extra tensors `save_with` stored; a
    /// damaged file is refused naming it.
    #[test]
    fn load_full_returns_what_save_with_stored() {
        let _rng = crate::rng_lock();
        tch::manual_seed(0);
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("d.safetensors");
        let model = models::build(&ModelConfig::lenet5(), Device::Cpu).unwrap();
        let t = Tensor::from_slice(&[1.5f64, -2.0]);
        save_with(
            &p,
            model.as_ref(),
            &[("k", "v".to_string())],
            &[("a/b".to_string(), t.shallow_clone())],
        )
        .unwrap();
        let l = load_full(&p, Device::Cpu).unwrap();
        assert_eq!(l.meta, CheckpointMeta::of(model.as_ref()));
        assert_eq!(l.extra, HashMap::from([("k".to_string(), "v".to_string())]));
        assert_eq!(l.extra_tensors.len(), 1);
        assert!(l.extra_tensors["a/b"].equal(&t));
        for ((n, a), (m, b)) in sorted_vars(model.as_ref())
            .iter()
            .zip(&sorted_vars(l.model.as_ref()))
        {
            assert!(n == m && a.equal(b), "{n}");
        }
        // What the three separate readers return, from the same file.
        assert_eq!(read_extra(&p, "k").unwrap().as_deref(), Some("v"));
        assert!(read_extra_tensors(&p).unwrap()["a/b"].equal(&t));

        std::fs::write(&p, b"not a safetensors file").unwrap();
        let e = load_full(&p, Device::Cpu).err().unwrap().to_string();
        assert!(
            e.contains("d.safetensors") && e.contains("not a safetensors file"),
            "{e}"
        );
    }
}
