//! Image folders: `DIR/<class>/<image>`. Class ids follow `DIR/classes.txt` when it exists (one
//! sub-folder name per line, line k = class k, as a model trained elsewhere expects them), else the
//! sorted sub-folder names; the caller prints the mapping either way. Images are decoded per batch
//! in parallel (rayon), so a folder of 100k JPEGs never sits in memory at once. All images must share
//! the size and channel count of the first one (grey -> 1 channel, anything else -> RGB).

use super::image::{channels, decode_file, to_chw};
use super::{display, Dataset, Storage};
use crate::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use tch::Tensor;

const EXTS: [&str; 4] = ["png", "jpg", "jpeg", "bmp"];

/// The file that fixes the class order of a folder.
pub const CLASS_LIST: &str = "classes.txt";

pub(super) fn open(dir: &Path) -> Result<Dataset> {
    let read = |p: &Path| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|e| Error::io(format!("read image folder {}", display(p)), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        v.sort();
        Ok(v)
    };
    let mut classes: Vec<PathBuf> = read(dir)?.into_iter().filter(|p| p.is_dir()).collect();
    if classes.is_empty() {
        return Err(Error::bad_file(
            dir,
            "has no class sub-folders (folder:DIR expects DIR/<class>/<image>)",
        ));
    }
    let list = dir.join(CLASS_LIST);
    if list.is_file() {
        classes = ordered_classes(&list, &classes)?;
    }
    let mut files = Vec::new();
    let mut labels = Vec::new();
    for (k, c) in classes.iter().enumerate() {
        for f in read(c)? {
            let ext = f
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_ascii_lowercase();
            if f.is_file() && EXTS.contains(&ext.as_str()) {
                files.push(f);
                labels.push(k as i64);
            }
        }
    }
    if files.is_empty() {
        return Err(Error::bad_file(
            dir,
            "contains no images (.png, .jpg, .jpeg, .bmp)",
        ));
    }
    let first = decode_file(&files[0])?;
    let c = channels(&first);
    let shape = [c, first.height() as usize, first.width() as usize];
    Ok(Dataset {
        name: format!("folder:{}", display(dir)),
        len: files.len(),
        storage: Storage::Folder(files),
        shape,
        labels: Some(labels),
        num_classes: Some(classes.len()),
        class_names: Some(
            classes
                .iter()
                .map(|c| c.file_name().unwrap().to_string_lossy().into_owned())
                .collect(),
        ),
    })
}

/// The sub-folders in the order of the class list at `list`, which must name each exactly once.
fn ordered_classes(list: &Path, found: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(list)
        .map_err(|e| Error::io(format!("read class list {}", display(list)), e))?;
    let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
    let mut out: Vec<PathBuf> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let c = line.trim();
        if c.is_empty() {
            continue;
        }
        let Some(p) = found.iter().find(|p| name(p) == c) else {
            return Err(Error::bad_file(
                list,
                format!("line {}: class '{c}' has no sub-folder", i + 1),
            ));
        };
        if out.contains(p) {
            return Err(Error::bad_file(
                list,
                format!("line {}: class '{c}' is listed twice", i + 1),
            ));
        }
        out.push(p.clone());
    }
    if let Some(p) = found.iter().find(|p| !out.contains(p)) {
        return Err(Error::bad_file(
            list,
            format!("does not list the sub-folder '{}'", name(p)),
        ));
    }
    Ok(out)
}

/// Decode `files` into float32 `[B, C, H, W]` in `[0, 1]`.
pub(super) fn decode_batch(files: &[PathBuf], shape: [usize; 3]) -> Result<Tensor> {
    let [c, h, w] = shape;
    let decoded: Vec<Result<Vec<u8>>> = files
        .par_iter()
        .map(|f| {
            let img = decode_file(f)?;
            if img.height() as usize != h || img.width() as usize != w {
                return Err(Error::bad_file(
                    f,
                    format!(
                        "is {}x{}, expected {w}x{h} like the folder's first image",
                        img.width(),
                        img.height()
                    ),
                ));
            }
            let ch = channels(&img);
            if ch != c {
                return Err(Error::bad_file(
                    f,
                    format!("has {ch} channel(s), expected {c}"),
                ));
            }
            Ok(to_chw(&img, c))
        })
        .collect();
    let mut all = Vec::with_capacity(files.len() * c * h * w);
    for d in decoded {
        all.extend(d?);
    }
    Ok(Tensor::from_slice(&all)
        .view([files.len() as i64, c as i64, h as i64, w as i64])
        .to_kind(tch::Kind::Float)
        / 255.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grey (with alpha) is one channel, colour (with alpha) three; conversion either way and the
    /// CHW layout (the channel planes one after another).
    #[test]
    fn channels_and_chw_layout() {
        let rgba = image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(2, 1, |x, _| {
            image::Rgba([10 + x as u8, 20, 30, 7])
        }));
        let la = image::DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_fn(2, 1, |x, _| {
            image::LumaA([100 + x as u8, 7])
        }));
        assert_eq!((channels(&rgba), channels(&la)), (3, 1));
        assert_eq!(to_chw(&rgba, 3), [10, 11, 20, 20, 30, 30]);
        assert_eq!(to_chw(&la, 3), [100, 101, 100, 101, 100, 101]);
        assert_eq!(to_chw(&la, 1), [100, 101]);
        // RGB -> grey is the image crate's luma (Rec. 709 weights).
        let luma = rgba.to_luma8().into_raw();
        assert_eq!(to_chw(&rgba, 1), luma);
    }

    #[test]
    fn reads_classes_and_names_bad_files() {
        let d = tempfile::tempdir().unwrap();
        for (cls, v) in [("cat", 10u8), ("dog", 250u8)] {
            std::fs::create_dir(d.path().join(cls)).unwrap();
            let img = image::RgbImage::from_fn(5, 4, |x, y| image::Rgb([v, x as u8, y as u8]));
            img.save(d.path().join(cls).join("a.png")).unwrap();
        }
        let ds = open(d.path()).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.shape(), [3, 4, 5]);
        assert_eq!(ds.labels().unwrap(), &[0, 1]);
        assert_eq!(
            ds.class_names().unwrap(),
            &["cat".to_string(), "dog".to_string()]
        );
        let (x, _) = ds.batch(0, 2).unwrap();
        let v = f64::try_from(x.get(1).get(0).get(0).get(0)).unwrap();
        assert!((v - 250.0 / 255.0).abs() < 1e-6);
        let g = f64::try_from(x.get(0).get(1).get(2).get(3)).unwrap(); // G = x = 3
        assert!((g - 3.0 / 255.0).abs() < 1e-6);
        // a truncated image is named in the error
        std::fs::write(
            d.path().join("dog").join("b.png"),
            b"\x89PNG\r\n\x1a\nbroken",
        )
        .unwrap();
        let ds = open(d.path()).unwrap();
        let e = ds.batch(0, 3).unwrap_err().to_string();
        assert!(e.contains("b.png") && e.contains("decode"), "{e}");
        // a wrong size is named too
        image::RgbImage::new(3, 3)
            .save(d.path().join("dog").join("b.png"))
            .unwrap();
        let e = open(d.path()).unwrap().batch(0, 3).unwrap_err().to_string();
        assert!(e.contains("b.png") && e.contains("expected 5x4"), "{e}");
    }

    #[test]
    fn oversized_image_is_an_error_before_decoding() {
        // The fuzzer's 537-byte JPEG (fuzz/corpus/image_folder/crash-jpeg-oversized): its header
        // claims an image of ~300 MB; batching it allocated a 1.2 GB float tensor.
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        let jpg = include_bytes!("../../fuzz/corpus/image_folder/crash-jpeg-oversized");
        std::fs::write(d.path().join("a").join("x.jpg"), jpg).unwrap();
        let e = open(d.path()).unwrap_err().to_string();
        assert!(e.contains("x.jpg") && e.contains("64 MiB"), "{e}");
    }

    #[test]
    fn class_list_sets_the_order_and_is_checked() {
        let d = tempfile::tempdir().unwrap();
        for cls in ["cat", "dog", "emu"] {
            std::fs::create_dir(d.path().join(cls)).unwrap();
            image::GrayImage::new(2, 2)
                .save(d.path().join(cls).join("a.png"))
                .unwrap();
        }
        let list = d.path().join(CLASS_LIST);
        std::fs::write(&list, "emu\ncat\n\ndog\n").unwrap();
        let ds = open(d.path()).unwrap();
        assert_eq!(ds.class_names().unwrap(), &["emu", "cat", "dog"]);
        // images are listed class by class: emu's first, labelled 0
        assert_eq!(ds.labels().unwrap(), &[0, 1, 2]);
        for (text, want) in [
            ("emu\ncat\n", "does not list the sub-folder 'dog'"),
            (
                "emu\ncat\ndog\ncat\n",
                "line 4: class 'cat' is listed twice",
            ),
            ("emu\ncow\n", "line 2: class 'cow' has no sub-folder"),
        ] {
            std::fs::write(&list, text).unwrap();
            let e = open(d.path()).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("classes.txt"), "{e}");
        }
    }

    #[test]
    fn gather_and_prefetched_batches_equal_plain_batches() {
        let d = tempfile::tempdir().unwrap();
        for (cls, v) in [("a", 10u8), ("b", 100u8), ("c", 200u8)] {
            std::fs::create_dir(d.path().join(cls)).unwrap();
            for j in 0..3u8 {
                image::GrayImage::from_pixel(4, 4, image::Luma([v + j]))
                    .save(d.path().join(cls).join(format!("{j}.png")))
                    .unwrap();
            }
        }
        let ds = open(d.path()).unwrap();
        let (all, labels) = ds.batch(0, 9).unwrap();
        let (x, y) = ds.gather(&[7, 0, 4]).unwrap();
        let idx = Tensor::from_slice(&[7i64, 0, 4]);
        assert!(x.equal(&all.index_select(0, &idx)) && y.equal(&labels.index_select(0, &idx)));
        assert!(ds
            .gather(&[9])
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        let mut seen = vec![];
        ds.for_each_batch(4, &mut |s, x, y| {
            let n = x.size()[0];
            assert!(
                x.equal(&all.narrow(0, s as i64, n)) && y.equal(&labels.narrow(0, s as i64, n))
            );
            seen.push((s, n));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [(0, 4), (4, 4), (8, 1)]);
        // The consumer's error stops the stream and comes back.
        let e = ds.for_each_batch(4, &mut |_, _, _| Err(Error::invalid("stop")));
        assert_eq!(e.unwrap_err().to_string(), "stop");
    }
}
