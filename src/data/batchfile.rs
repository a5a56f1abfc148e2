//! Batch files: safetensors with `images` [N,C,H,W] (float32 in [0,1], or uint8) and optional
//! `labels` [N] int64. Read through a memory map, so opening one costs no RAM; written atomically.

use super::{display, max_label_classes, Dataset, Storage};
use crate::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;
use tch::Kind;

pub(super) fn open(path: &Path) -> Result<Dataset> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("open batch file {}", display(path)), e))?;
    // SAFETY: the map is read-only; a file truncated underneath us is the user's race.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| Error::io(format!("map {}", display(path)), e))?;
    let st = SafeTensors::deserialize(&map)
        .map_err(|e| Error::bad_file(path, format!("not a valid safetensors file: {e}")))?;
    let images = st.tensor("images").map_err(|_| {
        Error::bad_file(
            path,
            "has no tensor named 'images' (a batch file needs images [N,C,H,W])",
        )
    })?;
    let shape = images.shape().to_vec();
    if shape.len() != 4 {
        return Err(Error::bad_file(
            path,
            format!("'images' must be [N,C,H,W], got shape {shape:?}"),
        ));
    }
    let kind = match images.dtype() {
        Dtype::U8 => Kind::Uint8,
        Dtype::F32 => Kind::Float,
        d => {
            return Err(Error::bad_file(
                path,
                format!("'images' must be float32 or uint8, got {d:?}"),
            ))
        }
    };
    if !matches!(shape[1], 1 | 3) {
        return Err(Error::bad_file(
            path,
            format!(
                "'images' must have 1 or 3 channels, got {} (shape {shape:?})",
                shape[1]
            ),
        ));
    }
    // Offset of the images' bytes inside the file: the slice borrows from the map.
    let offset = images.data().as_ptr() as usize - map.as_ptr() as usize;
    if kind == Kind::Float {
        let data = images.data();
        for (i, chunk) in data.chunks_exact(4).enumerate() {
            let v = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            if !(0.0..=1.0).contains(&v) {
                let per = shape[1] * shape[2] * shape[3];
                return Err(Error::bad_file(
                    path,
                    format!(
                        "image {} has pixel value {v}: float images must lie in [0, 1]",
                        i / per
                    ),
                ));
            }
        }
    }
    let n = shape[0];
    let labels = match st.tensor("labels") {
        Ok(l) => {
            if l.dtype() != Dtype::I64 || l.shape() != [n] {
                return Err(Error::bad_file(
                    path,
                    format!(
                        "'labels' must be int64 [{n}], got {:?} {:?}",
                        l.dtype(),
                        l.shape()
                    ),
                ));
            }
            let v: Vec<i64> = l
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            // i64::MAX is refused too: the class count, 1 + the largest label, must fit.
            if let Some((i, x)) = v.iter().enumerate().find(|(_, &x)| x < 0 || x == i64::MAX) {
                let why = if *x < 0 { "negative" } else { "too large" };
                return Err(Error::bad_file(
                    path,
                    format!("label {x} at index {i} is {why}"),
                ));
            }
            Some(v)
        }
        Err(_) => None,
    };
    let meta = SafeTensors::read_metadata(&map)
        .ok()
        .and_then(|(_, m)| m.metadata().clone());
    let num_classes = meta
        .as_ref()
        .and_then(|m| m.get("num_classes"))
        .and_then(|s| s.parse().ok())
        .or_else(|| labels.as_deref().and_then(max_label_classes));
    let class_names = meta
        .as_ref()
        .and_then(|m| m.get("class_names"))
        .and_then(|s| serde_json::from_str::<Vec<String>>(s).ok());
    Ok(Dataset {
        name: display(path),
        storage: Storage::Mapped { map, offset, kind },
        len: n,
        shape: [shape[1], shape[2], shape[3]],
        labels,
        num_classes,
        class_names,
    })
}

/// Write a batch file atomically. `images` is uint8 or float32 `[N,C,H,W]`, `labels` int64 `[N]`.
pub fn write_batch_file(
    path: &Path,
    images: &tch::Tensor,
    labels: Option<&tch::Tensor>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let size = images.size();
    if size.len() != 4 {
        return Err(Error::Shape(format!(
            "images must be [N,C,H,W], got {size:?}"
        )));
    }
    let (dtype, images) = match images.kind() {
        Kind::Uint8 => (Dtype::U8, images.contiguous()),
        Kind::Float => (Dtype::F32, images.contiguous()),
        k => {
            return Err(Error::Shape(format!(
                "images must be uint8 or float32, got {k:?}"
            )))
        }
    };
    let img_bytes = tensor_bytes(&images);
    let shape: Vec<usize> = size.iter().map(|&d| d as usize).collect();
    let mut views = vec![(
        "images".to_string(),
        safetensors::tensor::TensorView::new(dtype, shape, &img_bytes)?,
    )];
    let lab_bytes;
    if let Some(l) = labels {
        if l.kind() != Kind::Int64 || l.size() != [size[0]] {
            return Err(Error::Shape(format!(
                "labels must be int64 [{}], got {:?} {:?}",
                size[0],
                l.kind(),
                l.size()
            )));
        }
        lab_bytes = tensor_bytes(&l.contiguous());
        views.push((
            "labels".to_string(),
            safetensors::tensor::TensorView::new(Dtype::I64, vec![size[0] as usize], &lab_bytes)?,
        ));
    }
    let bytes = safetensors::serialize(views, &Some(metadata))?;
    crate::cache::write_atomic(path, &bytes)
}

/// The raw little-endian bytes of a contiguous CPU tensor.
pub(crate) fn tensor_bytes(t: &tch::Tensor) -> Vec<u8> {
    let t = t.to_device(tch::Device::Cpu).contiguous();
    let n = t.numel() * t.kind().elt_size_in_bytes();
    let mut out = vec![0u8; n];
    t.copy_data_u8(&mut out, t.numel());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn round_trip_u8_and_f32() {
        let _rng = crate::rng_lock();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("b.safetensors");
        let imgs =
            Tensor::arange(2 * 3 * 4 * 4, (Kind::Uint8, tch::Device::Cpu)).view([2, 3, 4, 4]);
        let labels = Tensor::from_slice(&[3i64, 7]);
        write_batch_file(&p, &imgs, Some(&labels), HashMap::new()).unwrap();
        let ds = open(&p).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.shape(), [3, 4, 4]);
        assert_eq!(ds.num_classes(), Some(8));
        let (x, y) = ds.batch(1, 2).unwrap();
        assert_eq!(x.size(), [1, 3, 4, 4]);
        let want = imgs.get(1).to_kind(Kind::Float) / 255.0;
        assert!(f64::try_from((x.get(0) - want).abs().max()).unwrap() < 1e-7);
        assert_eq!(Vec::<i64>::try_from(y).unwrap(), vec![7]);

        let f = Tensor::rand([3, 1, 2, 2], (Kind::Float, tch::Device::Cpu));
        write_batch_file(&p, &f, None, HashMap::new()).unwrap();
        let ds = open(&p).unwrap();
        let (x, y) = ds.batch(0, 3).unwrap();
        assert!(x.equal(&f));
        assert_eq!(Vec::<i64>::try_from(y).unwrap(), vec![-1, -1, -1]);
    }

    #[test]
    fn rejects_bad_files() {
        let _rng = crate::rng_lock();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("b.safetensors");
        std::fs::write(&p, b"garbage").unwrap();
        assert!(open(&p)
            .unwrap_err()
            .to_string()
            .contains("not a valid safetensors"));
        let f = Tensor::rand([3, 2, 2, 2], (Kind::Float, tch::Device::Cpu));
        write_batch_file(&p, &f, None, HashMap::new()).unwrap();
        assert!(open(&p)
            .unwrap_err()
            .to_string()
            .contains("1 or 3 channels"));
        let f = Tensor::rand([3, 1, 2, 2], (Kind::Float, tch::Device::Cpu)) + 1.5;
        write_batch_file(&p, &f, None, HashMap::new()).unwrap();
        let e = open(&p).unwrap_err().to_string();
        assert!(e.contains("image 0") && e.contains("[0, 1]"), "{e}");
    }

    #[test]
    fn label_i64_max_is_an_error() {
        // 1 + the largest label is the class count: i64::MAX overflowed computing it.
        let _rng = crate::rng_lock();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("b.safetensors");
        let imgs = Tensor::zeros([1, 1, 2, 2], (Kind::Uint8, tch::Device::Cpu));
        let labels = Tensor::from_slice(&[i64::MAX]);
        write_batch_file(&p, &imgs, Some(&labels), HashMap::new()).unwrap();
        let e = open(&p).unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
    }
}

/// Writes a batch file incrementally, so a command can stream a data set of any size through it
/// with memory bounded by one batch. The safetensors header is written first (N and the image
/// shape are known up front), then image batches, then the labels; the file is built in a temp
/// file beside the destination and renamed into place by [`BatchFileWriter::finish`], so an
/// interrupted run leaves nothing behind.
pub struct BatchFileWriter {
    tmp: crate::cache::AtomicFile,
    out: std::io::BufWriter<std::fs::File>,
    path: std::path::PathBuf,
    n: usize,
    chw: [usize; 3],
    written: usize,
}

impl BatchFileWriter {
    /// `n` images of shape `chw` (float32) followed by `n` int64 labels.
    pub fn create(
        path: &Path,
        n: usize,
        chw: [usize; 3],
        metadata: HashMap<String, String>,
    ) -> Result<Self> {
        use std::io::Write;
        let img_bytes = n * chw.iter().product::<usize>() * 4;
        let header = serde_json::json!({
            "__metadata__": metadata,
            "images": { "dtype": "F32", "shape": [n, chw[0], chw[1], chw[2]],
                        "data_offsets": [0, img_bytes] },
            "labels": { "dtype": "I64", "shape": [n], "data_offsets": [img_bytes, img_bytes + 8 * n] },
        });
        let mut h = serde_json::to_vec(&header)?;
        h.resize(h.len().div_ceil(8) * 8, b' '); // 8-byte alignment, as the safetensors crate does
        let tmp = crate::cache::AtomicFile::create(path)?;
        let file = tmp.reopen()?;
        let mut out = std::io::BufWriter::new(file);
        out.write_all(&(h.len() as u64).to_le_bytes())
            .and_then(|_| out.write_all(&h))
            .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
        Ok(BatchFileWriter {
            tmp,
            out,
            path: path.to_path_buf(),
            n,
            chw,
            written: 0,
        })
    }

    /// Append float32 images `[B, C, H, W]`.
    pub fn push(&mut self, images: &tch::Tensor) -> Result<()> {
        use std::io::Write;
        let s = images.size();
        let [c, h, w] = self.chw.map(|v| v as i64);
        if s.len() != 4 || s[1..] != [c, h, w] || images.kind() != Kind::Float {
            return Err(Error::Shape(format!(
                "batch file {}: expected float32 [B, {c}, {h}, {w}], got {:?} {s:?}",
                self.path.display(),
                images.kind()
            )));
        }
        if self.written + s[0] as usize > self.n {
            return Err(Error::Shape(format!(
                "batch file {}: more than the {} images announced",
                self.path.display(),
                self.n
            )));
        }
        self.out
            .write_all(&tensor_bytes(images))
            .map_err(|e| Error::io(format!("write {}", self.path.display()), e))?;
        self.written += s[0] as usize;
        Ok(())
    }

    /// Append the labels and move the finished file into place.
    pub fn finish(mut self, labels: &[i64]) -> Result<()> {
        use std::io::Write;
        if self.written != self.n || labels.len() != self.n {
            return Err(Error::Shape(format!(
                "batch file {}: {} images and {} labels written, {} announced",
                self.path.display(),
                self.written,
                labels.len(),
                self.n
            )));
        }
        let bytes: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
        self.out
            .write_all(&bytes)
            .and_then(|_| self.out.flush())
            .map_err(|e| Error::io(format!("write {}", self.path.display()), e))?;
        drop(self.out);
        self.tmp.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod writer_tests {
    use super::*;

    #[test]
    fn streamed_file_reads_back_and_unfinished_leaves_nothing() {
        let _rng = crate::rng_lock();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.safetensors");
        let x = tch::Tensor::rand([5, 1, 3, 2], (Kind::Float, tch::Device::Cpu));
        let mut meta = HashMap::new();
        meta.insert("attack".to_string(), "pgd".to_string());
        let mut w = BatchFileWriter::create(&p, 5, [1, 3, 2], meta).unwrap();
        w.push(&x.narrow(0, 0, 2)).unwrap();
        w.push(&x.narrow(0, 2, 3)).unwrap();
        w.finish(&[0, 1, 2, 3, 4]).unwrap();
        let ds = open(&p).unwrap();
        let (xb, yb) = ds.batch(0, 5).unwrap();
        assert!(xb.equal(&x));
        assert_eq!(Vec::<i64>::try_from(yb).unwrap(), vec![0, 1, 2, 3, 4]);
        // an abandoned writer (e.g. an error mid-attack) leaves no file
        let q = d.path().join("t.safetensors");
        let mut w = BatchFileWriter::create(&q, 5, [1, 3, 2], HashMap::new()).unwrap();
        w.push(&x.narrow(0, 0, 2)).unwrap();
        assert!(w.push(&x.narrow(0, 0, 4)).is_err());
        drop(w);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
