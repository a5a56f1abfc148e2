//! CIFAR-10 binary format (user-supplied; no registry ships it): `data_batch_{1..5}.bin` (train) or
//! `test_batch.bin` (test), each record one label byte then 3,072 pixel bytes (R, G, B planes of
//! 32x32).

use super::{display, Dataset, Storage};
use crate::{Error, Result};
use std::path::Path;

const RECORD: usize = 1 + 3 * 32 * 32;
pub(super) const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

pub(super) fn open(dir: &Path, train: bool) -> Result<Dataset> {
    let files: Vec<String> = if train {
        (1..=5).map(|i| format!("data_batch_{i}.bin")).collect()
    } else {
        vec!["test_batch.bin".to_string()]
    };
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for f in &files {
        let p = dir.join(f);
        let bytes = std::fs::read(&p).map_err(|e| {
            Error::io(
                format!(
                    "read CIFAR-10 file {} (cifar10:DIR expects the binary version's files in DIR)",
                    display(&p)
                ),
                e,
            )
        })?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(Error::bad_file(
                &p,
                format!(
                    "size {} is not a multiple of the {RECORD}-byte CIFAR-10 record (truncated?)",
                    bytes.len()
                ),
            ));
        }
        for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
            if rec[0] > 9 {
                return Err(Error::bad_file(
                    &p,
                    format!("record {i} has label {} (CIFAR-10 labels are 0..9)", rec[0]),
                ));
            }
            labels.push(rec[0] as i64);
            pixels.extend_from_slice(&rec[1..]);
        }
    }
    Ok(Dataset {
        name: format!(
            "cifar10:{}:{}",
            display(dir),
            if train { "train" } else { "test" }
        ),
        len: labels.len(),
        storage: Storage::Bytes(pixels),
        shape: [3, 32, 32],
        labels: Some(labels),
        num_classes: Some(10),
        class_names: Some(CLASSES.iter().map(|s| s.to_string()).collect()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_records_and_rejects_truncation() {
        let d = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        for (label, fill) in [(3u8, 10u8), (9, 200)] {
            bytes.push(label);
            for plane in 0..3u8 {
                bytes.extend(std::iter::repeat_n(fill + plane, 1024));
            }
        }
        std::fs::write(d.path().join("test_batch.bin"), &bytes).unwrap();
        let ds = open(d.path(), false).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.labels().unwrap(), &[3, 9]);
        let (x, _) = ds.batch(0, 2).unwrap();
        assert_eq!(x.size(), [2, 3, 32, 32]);
        let v = f64::try_from(x.get(1).get(2).get(5).get(7)).unwrap();
        assert!((v - 202.0 / 255.0).abs() < 1e-6);
        std::fs::write(d.path().join("test_batch.bin"), &bytes[..RECORD + 10]).unwrap();
        let e = open(d.path(), false).unwrap_err().to_string();
        assert!(
            e.contains("test_batch.bin") && e.contains("truncated"),
            "{e}"
        );
        let e = open(d.path(), true).unwrap_err().to_string();
        assert!(e.contains("data_batch_1.bin"), "{e}");
    }
}
