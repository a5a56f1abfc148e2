//! Image files as model inputs: finding them ([`walk_images`]), decoding them within a size
//! limit ([`decode_file`], [`decode_bytes`]: inputs may come from anyone), and bringing them to a
//! model's `[C, H, W]` as float pixels in `[0, 1]` ([`decode_input`], under an [`ImagePolicy`]).
//! Image folders (`folder:DIR`) and `libre detect`'s inputs both decode here.
//!
//! Resizing (shorter side to the model's size, then a centre crop) and channel conversion
//! (grey <-> RGB) are opt-in: resizing resamples the pixels and so weakens or destroys an
//! adversarial perturbation, which a detector should never do silently.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Image file extensions read from folders.
pub const IMAGE_EXTS: [&str; 5] = ["png", "jpg", "jpeg", "bmp", "gif"];

/// How decoded images are brought to the model's input shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImagePolicy {
    /// Resize the shorter side to the model's size and centre-crop (weakens perturbations).
    pub resize: bool,
    /// Convert grey to RGB (replicated) or RGB to grey (luma) when the channel count differs.
    pub convert_channels: bool,
}

/// Whether `p` has an image extension ([`IMAGE_EXTS`], any case).
pub fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Every image file under `dir`, recursively, sorted by path (a stable order for sharding).
///
/// Symbolic links are followed, but every directory is walked once, however many links lead to
/// it (directories are told apart by device and inode): a link to the folder itself or to one of
/// its parents is skipped rather than walked again, so a loop neither repeats images nor runs
/// forever. A link to an image file is an input like the file itself.
pub fn walk_images(dir: &Path) -> Result<Vec<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    let key = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    let mut seen = std::collections::HashSet::new();
    seen.insert(key(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?);
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd =
            std::fs::read_dir(&d).map_err(|e| Error::io(format!("reading {}", d.display()), e))?;
        for e in rd {
            let p = e
                .map_err(|e| Error::io(format!("reading {}", d.display()), e))?
                .path();
            if p.is_dir() {
                // A directory seen before (a link back to it) is not walked again.
                if key(&p).is_ok_and(|k| seen.insert(k)) {
                    stack.push(p);
                }
            } else if is_image(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The most bytes one image may take decoded. A folder image or a `libre detect` input is a
/// classifier input, yet a JPEG header of a few hundred bytes can claim 65535 x 65535 pixels: the
/// fuzzer (docs/fuzzing.md) found a 537-byte file that decoded to ~300 MB, then became a 1.2 GB
/// float tensor. 64 MiB is a 4096 x 4096 RGB image (256 MiB once float32); the decoders check it
/// before allocating.
pub const MAX_DECODED_BYTES: u64 = 1 << 26;

/// Decodes one image file (the format from its extension, as `image::open`), within
/// [`MAX_DECODED_BYTES`].
pub fn decode_file(f: &Path) -> Result<image::DynamicImage> {
    let reader = image::ImageReader::open(f)
        .map_err(|e| Error::bad_file(f, format!("cannot decode image: {e}")))?;
    decode_limited(reader, f)
}

/// Decodes an image held in memory (the format from its first bytes), named `name` in errors,
/// within [`MAX_DECODED_BYTES`].
pub fn decode_bytes(bytes: &[u8], name: &Path) -> Result<image::DynamicImage> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::bad_file(name, format!("cannot decode image: {e}")))?;
    decode_limited(reader, name)
}

fn decode_limited<R: std::io::BufRead + std::io::Seek>(
    mut reader: image::ImageReader<R>,
    name: &Path,
) -> Result<image::DynamicImage> {
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    reader.decode().map_err(|e| {
        let why = match e {
            image::ImageError::Limits(_) => format!(
                "cannot decode image: its header claims more than the {} MiB an input image may \
                 take decoded ({e})",
                MAX_DECODED_BYTES >> 20
            ),
            e => format!("cannot decode image: {e}"),
        };
        Error::bad_file(name, why)
    })
}

/// The channel count a decoded image gives the model: 1 for grey (with or without alpha), else 3
/// (alpha dropped).
pub fn channels(img: &image::DynamicImage) -> usize {
    if img.color().channel_count() <= 2 {
        1
    } else {
        3
    }
}

/// The image's pixels as `c` channels (1: luma, 3: RGB, converting if the image has the other),
/// laid out CHW, as libtorch takes them.
pub fn to_chw(img: &image::DynamicImage, c: usize) -> Vec<u8> {
    let raw = if c == 1 {
        img.to_luma8().into_raw()
    } else {
        img.to_rgb8().into_raw()
    };
    let hw = raw.len() / c;
    let mut chw = vec![0u8; raw.len()];
    for i in 0..hw {
        for k in 0..c {
            chw[k * hw + i] = raw[i * c + k];
        }
    }
    chw
}

/// Decodes one image file to CHW float pixels in [0, 1] of shape `want` = `[C, H, W]` (within the
/// data loaders' decoded-size limit: inputs may come from anyone).
pub fn decode_input(path: &Path, want: [usize; 3], policy: ImagePolicy) -> Result<Vec<f32>> {
    to_pixels(decode_file(path)?, path, want, policy)
}

/// Decodes an encoded image held in memory (standard input), named `name` in errors.
pub fn decode_input_bytes(
    bytes: &[u8],
    name: &Path,
    want: [usize; 3],
    policy: ImagePolicy,
) -> Result<Vec<f32>> {
    to_pixels(decode_bytes(bytes, name)?, name, want, policy)
}

/// Brings a decoded image to `want` under `policy` and lays it out as CHW floats in [0, 1].
fn to_pixels(
    mut img: image::DynamicImage,
    path: &Path,
    want: [usize; 3],
    policy: ImagePolicy,
) -> Result<Vec<f32>> {
    let [c, h, w] = want;
    let bad = |m: String| Error::bad_file(path, m);
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    if iw != w || ih != h {
        if !policy.resize {
            // A setting the image needs: the CLI names its flag (`cli::render_error`).
            return Err(Error::Missing {
                name: "resize",
                why: format!(
                    "{}: is {iw}x{ih}, the model takes {w}x{h} (resizing and centre-cropping \
                     also weakens any perturbation)",
                    path.display()
                ),
            });
        }
        // Shorter side to the target, then a centre crop.
        let scale = (w as f64 / iw as f64).max(h as f64 / ih as f64);
        let (rw, rh) = (
            ((iw as f64 * scale).round() as u64).max(w as u64),
            ((ih as f64 * scale).round() as u64).max(h as u64),
        );
        // The resized image is held whole before the crop: an extreme aspect ratio (1 x 10^7
        // pixels, a few KB of PNG) would make it gigabytes. The decoded-size limit applies to
        // it as to the decoded image.
        let bytes = rw
            .saturating_mul(rh)
            .saturating_mul(img.color().bytes_per_pixel() as u64);
        if bytes > MAX_DECODED_BYTES {
            return Err(bad(format!(
                "is {iw}x{ih}: resizing would make it {rw}x{rh} before the centre crop, more than \
                 the {} MiB an input image may take decoded (crop it to an aspect ratio nearer \
                 {w}:{h} first)",
                MAX_DECODED_BYTES >> 20
            )));
        }
        let (rw, rh) = (rw as u32, rh as u32);
        img = img.resize_exact(rw, rh, image::imageops::FilterType::Triangle);
        let (x0, y0) = ((rw - w as u32) / 2, (rh - h as u32) / 2);
        img = img.crop_imm(x0, y0, w as u32, h as u32);
    }
    let has = channels(&img);
    if has != c && !policy.convert_channels {
        return Err(Error::Missing {
            name: "convert_channels",
            why: format!(
                "{}: has {has} channel(s), the model takes {c}",
                path.display()
            ),
        });
    }
    Ok(to_chw(&img, c)
        .into_iter()
        .map(|v| v as f32 / 255.0)
        .collect())
}
