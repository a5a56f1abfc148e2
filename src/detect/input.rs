//! What `libre detect` reads: image files, folders of images (recursive), batch files and data
//! specs, streamed in batches with decoding running ahead of the forward.
//!
//! Images must match the model's input size and channel count. Resizing (shorter side to the
//! model's size, then a centre crop) and channel conversion (grey <-> RGB) are opt-in: resizing
//! resamples the pixels and so weakens or destroys an adversarial perturbation, which a detector
//! should never do silently.

use crate::data::image::is_image;
use crate::data::Dataset;
use crate::{Error, Result};

// Decoding images is data input (`data::image`); this module streams them to the detector.
use crate::data::image::{
    decode_input as decode, decode_input_bytes as decode_bytes, walk_images, ImagePolicy,
    IMAGE_EXTS,
};
use rayon::prelude::*;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The input that reads one encoded image from standard input (a file named `-` is `./-`).
pub const STDIN: &str = "-";

/// One input segment, in the order given on the command line.
pub enum Segment {
    /// Image files (a folder is expanded to its images, sorted by path).
    Images(Vec<PathBuf>),
    /// One encoded image read from standard input ([`STDIN`]); its row's source is `-`.
    Stdin(Vec<u8>),
    /// A batch file or data spec; rows are `SPEC:INDEX`.
    Data(Dataset),
}

impl Segment {
    pub fn len(&self) -> usize {
        match self {
            Segment::Images(v) => v.len(),
            Segment::Stdin(_) => 1,
            Segment::Data(d) => d.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A path as text, losslessly: `\` is written `\\`, and each byte that is not part of valid
/// UTF-8 `\xNN` (upper-case hex); everything else as it is. The `source` column of `libre
/// detect` names image files this way, so two files never share a name there and the bytes of
/// the name can be recovered.
pub fn path_text(p: &Path) -> String {
    os_text(p.as_os_str())
}

/// [`path_text`] for any OS string (an argument).
pub fn os_text(s: &std::ffi::OsStr) -> String {
    use std::os::unix::ffi::OsStrExt;
    let b = s.as_bytes();
    if !b.contains(&b'\\') {
        if let Ok(s) = std::str::from_utf8(b) {
            return s.to_string();
        }
    }
    let mut out = String::with_capacity(b.len() + 8);
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for x in chunk.invalid() {
            out.push_str(&format!("\\x{x:02X}"));
        }
    }
    out
}

/// Whether a missing input was meant as a file or folder rather than a data spec: an image
/// extension, a trailing slash, or a slash without the `:` every spec with a path has
/// (`folder:DIR`, `cifar10:DIR:SPLIT`).
fn names_a_path(s: &str) -> bool {
    is_image(Path::new(s)) || s.ends_with('/') || (s.contains('/') && !s.contains(':'))
}

/// Resolves the command-line inputs into segments. `-` is one image read from standard input
/// (at most once); a path that exists is an image file, a folder or a batch file; anything else
/// must be a data spec.
pub fn resolve(inputs: &[String], on_fetch: &mut dyn FnMut(&str)) -> Result<Vec<Segment>> {
    let mut segs = Vec::new();
    if inputs.iter().filter(|s| *s == STDIN).count() > 1 {
        return Err(Error::invalid(
            "input '-' (standard input) given more than once",
        ));
    }
    for s in inputs {
        resolve_into(&mut segs, s, on_fetch)?;
    }
    Ok(segs)
}

/// Appends the segments of one input to `segs`.
fn resolve_into(segs: &mut Vec<Segment>, s: &str, on_fetch: &mut dyn FnMut(&str)) -> Result<()> {
    let p = Path::new(s);
    if s == STDIN {
        segs.push(Segment::Stdin(read_stdin()?));
    } else if p.is_dir() {
        let v = walk_images(p)?;
        if v.is_empty() {
            return Err(Error::bad_file(
                p,
                format!("contains no images ({})", IMAGE_EXTS.join(", ")),
            ));
        }
        push_images(segs, v);
    } else if p.is_file() && is_image(p) {
        push_images(segs, vec![p.to_path_buf()]);
    } else if p.is_file() && !s.ends_with(".safetensors") {
        return Err(Error::bad_file(
            p,
            format!(
                "is neither an image ({}) nor a .safetensors batch file",
                IMAGE_EXTS.join(", ")
            ),
        ));
    } else if !p.exists() && names_a_path(s) {
        // Said plainly: as a data spec it would fail with "unknown data set".
        return Err(Error::bad_file(p, "no such file or directory"));
    } else {
        segs.push(Segment::Data(crate::data::open(s, None, on_fetch)?));
    }
    Ok(())
}

/// Inputs read from a list (`libre detect --files-from`): for scans too large for the command
/// line, e.g. `find /store -name '*.png' -print0 | libre detect --files-from - --null ...`.
#[derive(Debug, Clone)]
pub struct InputList {
    /// The list's path, or `-` for standard input; errors name it.
    pub name: String,
    /// Whether entries end in NUL (as `find -print0` writes them) instead of a newline.
    pub null: bool,
    /// (line or entry number from 1, entry), empty entries left out.
    pub entries: Vec<(usize, String)>,
}

impl InputList {
    /// Reads a list of inputs from the file `name`, or from standard input when `name` is `-`.
    /// Entries are separated by newlines (a `\r` before the newline is dropped, so a list with
    /// CRLF line ends written on Windows reads as intended; a name that really ends in `\r`
    /// needs `null`) or, with `null`, by NUL bytes; empty entries are skipped. Each entry is an input as on the
    /// command line (image file, folder, batch file or data spec), except `-`.
    pub fn read(name: &str, null: bool) -> Result<InputList> {
        let bytes = if name == STDIN {
            read_piped_stdin(
                "input list '-' reads standard input, which is a terminal: pipe the list in (e.g. \
                 `find DIR -name '*.png' | ...`)",
            )?
        } else {
            std::fs::read(name)
                .map_err(|e| Error::io(format!("reading the input list {name}"), e))?
        };
        Self::parse(name, &bytes, null)
    }

    fn parse(name: &str, bytes: &[u8], null: bool) -> Result<InputList> {
        let sep = if null { 0u8 } else { b'\n' };
        let what = unit(null);
        let mut entries = Vec::new();
        for (i, raw) in bytes.split(|b| *b == sep).enumerate() {
            let raw = match raw.strip_suffix(b"\r") {
                Some(r) if !null => r,
                _ => raw,
            };
            if raw.is_empty() {
                continue;
            }
            let entry = std::str::from_utf8(raw)
                .map_err(|_| list_error(name, format!("{what} {}: not valid UTF-8", i + 1)))?;
            if !null && entry.contains('\0') {
                return Err(list_error(
                    name,
                    format!(
                        "{what} {}: contains a NUL byte (a `find -print0` list? read it as \
                         NUL-separated)",
                        i + 1
                    ),
                ));
            }
            if entry == STDIN {
                return Err(list_error(
                    name,
                    format!("{what} {}: '-' (standard input) cannot be listed", i + 1),
                ));
            }
            entries.push((i + 1, entry.to_string()));
        }
        Ok(InputList {
            name: name.to_string(),
            null,
            entries,
        })
    }

    /// Appends the listed inputs' segments to `segs`, in list order; an error names the list
    /// and the entry. Consumes the list: a long one is not held twice.
    pub fn resolve_into(
        self,
        segs: &mut Vec<Segment>,
        on_fetch: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let what = unit(self.null);
        for (n, s) in &self.entries {
            resolve_into(segs, s, on_fetch)
                .map_err(|e| list_error(&self.name, format!("{what} {n}: {e}")))?;
        }
        Ok(())
    }
}

/// What one list entry is called in errors: a line, or in a NUL-separated list an entry.
fn unit(null: bool) -> &'static str {
    if null {
        "entry"
    } else {
        "line"
    }
}

/// An error in the input list `name` (`-`: the one on standard input).
fn list_error(name: &str, msg: String) -> Error {
    if name == STDIN {
        Error::invalid(format!("input list on standard input: {msg}"))
    } else {
        Error::bad_file(name, msg)
    }
}

/// Reads the encoded image behind input `-`, refusing empty input.
fn read_stdin() -> Result<Vec<u8>> {
    let bytes = read_piped_stdin(
        "input '-' reads one image from standard input, which is a terminal: pipe an image in \
         (e.g. `... - < upload.png`)",
    )?;
    if bytes.is_empty() {
        return Err(Error::invalid("input '-': standard input is empty"));
    }
    Ok(bytes)
}

/// All of standard input, refused with `on_terminal` when it is a terminal: nothing was piped
/// in, and waiting for input typed by hand would look like a hang.
fn read_piped_stdin(on_terminal: &str) -> Result<Vec<u8>> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(Error::invalid(on_terminal));
    }
    let mut bytes = Vec::new();
    stdin
        .lock()
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("reading standard input", e))?;
    Ok(bytes)
}

/// Appends image files to the last segment when it holds images too: batches never span
/// segments, so `libre detect *.png` would otherwise run one forward per file (2.6x slower for
/// 1,000 MNIST-size PNGs than the same files as a folder).
fn push_images(segs: &mut Vec<Segment>, files: Vec<PathBuf>) {
    match segs.last_mut() {
        Some(Segment::Images(v)) => v.extend(files),
        _ => segs.push(Segment::Images(files)),
    }
}

/// One batch ready for the forward: the source names, the decoded images (a failed image keeps its
/// place with its error), and labels when the data set has them.
pub struct Batch {
    pub sources: Vec<String>,
    pub images: Vec<Result<Vec<f32>>>,
    pub labels: Option<Vec<i64>>,
}

impl Batch {
    /// The images that decoded, as `[n, C, H, W]`, with their positions in the batch.
    pub fn tensor(&self, want: [usize; 3]) -> Option<(Tensor, Vec<usize>)> {
        let [c, h, w] = want;
        let ok: Vec<usize> = (0..self.images.len())
            .filter(|&i| self.images[i].is_ok())
            .collect();
        if ok.is_empty() {
            return None;
        }
        let mut all = Vec::with_capacity(ok.len() * c * h * w);
        for &i in &ok {
            all.extend_from_slice(self.images[i].as_ref().expect("filtered"));
        }
        let t = Tensor::from_slice(&all).view([ok.len() as i64, c as i64, h as i64, w as i64]);
        Some((t, ok))
    }
}

/// Decodes a chunk of image files in parallel.
pub fn decode_chunk(files: &[PathBuf], want: [usize; 3], policy: ImagePolicy) -> Batch {
    Batch {
        sources: files.iter().map(|p| path_text(p)).collect(),
        images: files.par_iter().map(|p| decode(p, want, policy)).collect(),
        labels: None,
    }
}

/// Reads rows `start..end` of a data segment.
pub fn data_chunk(ds: &Dataset, start: usize, end: usize, want: [usize; 3]) -> Result<Batch> {
    if ds.shape() != want {
        return Err(Error::invalid(format!(
            "{}: images are {:?} (C, H, W), the model takes {:?}",
            ds.name,
            ds.shape(),
            want
        )));
    }
    let (x, y) = ds.batch(start, end)?;
    let n = end - start;
    let flat = Vec::<f32>::try_from(x.contiguous().view([-1])).map_err(Error::from)?;
    let per = want.iter().product::<usize>();
    Ok(Batch {
        sources: (start..end).map(|i| format!("{}:{i}", ds.name)).collect(),
        images: (0..n)
            .map(|i| Ok(flat[i * per..(i + 1) * per].to_vec()))
            .collect(),
        labels: ds
            .labels()
            .map(|_| Vec::<i64>::try_from(y).unwrap_or_default()),
    })
}

/// One batch of a run: rows `start..end` of segment `seg`, the `index`-th batch overall.
///
/// The batch list depends only on the inputs and the batch size, and batches never span two
/// segments. A shard runs a contiguous range of this list, so it computes exactly the batches an
/// unsharded run computes (the same images together, the same per-batch seed): sharded outputs
/// concatenate to the unsharded output bit for bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub index: usize,
    pub seg: usize,
    pub start: usize,
    pub end: usize,
}

/// The batches of `segs` in order (see [`Chunk`]).
pub fn chunks(segs: &[Segment], batch_size: usize) -> Vec<Chunk> {
    let bs = batch_size.max(1);
    let mut v = Vec::new();
    for (si, seg) in segs.iter().enumerate() {
        for start in (0..seg.len()).step_by(bs) {
            v.push(Chunk {
                index: v.len(),
                seg: si,
                start,
                end: (start + bs).min(seg.len()),
            });
        }
    }
    v
}

/// Streams the batches `plan` (a range of [`chunks`]) through `f`, decoding the next batch of
/// image files on a second thread while `f` runs (a channel of one batch bounds the memory).
pub fn stream(
    segs: &[Segment],
    plan: &[Chunk],
    want: [usize; 3],
    policy: ImagePolicy,
    f: &mut dyn FnMut(&Chunk, Batch) -> Result<()>,
) -> Result<()> {
    let files: Vec<&[PathBuf]> = plan
        .iter()
        .filter_map(|c| match &segs[c.seg] {
            Segment::Images(v) => Some(&v[c.start..c.end]),
            Segment::Stdin(_) | Segment::Data(_) => None,
        })
        .collect();
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(1);
        scope.spawn(move || {
            for chunk in files {
                if tx.send(decode_chunk(chunk, want, policy)).is_err() {
                    break; // the consumer stopped on an error
                }
            }
        });
        for c in plan {
            let b = match &segs[c.seg] {
                Segment::Data(ds) => data_chunk(ds, c.start, c.end, want)?,
                Segment::Stdin(bytes) => Batch {
                    sources: vec![STDIN.to_string()],
                    images: vec![decode_bytes(
                        bytes,
                        Path::new("standard input"),
                        want,
                        policy,
                    )],
                    labels: None,
                },
                Segment::Images(_) => rx
                    .recv()
                    .expect("the decoder sends one batch per image chunk"),
            };
            f(c, b)?;
        }
        Ok(())
    })
}

/// A digest of the ordered input list (every source name and data set size): shards of one run
/// must agree on it, so `libre detect merge` can refuse parts that read different inputs.
pub fn digest(segs: &[Segment]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for seg in segs {
        match seg {
            Segment::Images(v) => {
                for p in v {
                    use std::os::unix::ffi::OsStrExt;
                    h.update(b"file\0");
                    h.update(p.as_os_str().as_bytes());
                    h.update(b"\0");
                }
            }
            Segment::Stdin(bytes) => {
                h.update(b"stdin\0");
                h.update(bytes);
            }
            Segment::Data(d) => {
                h.update(format!("data\0{}\0{}\0{:?}\0", d.name, d.len(), d.shape()).as_bytes());
            }
        }
    }
    format!("{:x}", h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries keep their line numbers past skipped empty lines; a CRLF line end loses its `\r`
    /// (a `\r` inside a name, spaces and a `\r` in a NUL list stay); NULs in a newline list, `-` and bad UTF-8 are named with their line.
    #[test]
    fn input_lists_parse_by_line_or_nul() {
        let l = InputList::parse("l.txt", b"a.png\n\nb c.png\r\n d/\n\r\nx\ry\n", false).unwrap();
        let want = [(1, "a.png"), (3, "b c.png"), (4, " d/"), (6, "x\ry")];
        let got: Vec<(usize, &str)> = l.entries.iter().map(|(n, s)| (*n, s.as_str())).collect();
        assert_eq!(got, want);
        let l = InputList::parse("l.txt", b"a\nb.png\0\0c.png\r\0", true).unwrap();
        let got: Vec<(usize, &str)> = l.entries.iter().map(|(n, s)| (*n, s.as_str())).collect();
        assert_eq!(got, [(1, "a\nb.png"), (3, "c.png\r")]);
        let e = |b: &[u8], null: bool| InputList::parse("l.txt", b, null).unwrap_err().to_string();
        assert!(e(b"a.png\0b.png\0", false).contains("line 1: contains a NUL byte"));
        assert!(e(b"a.png\n-\n", false).contains("l.txt: line 2: '-'"));
        assert!(e(b"a.png\0\xff\0", true).contains("entry 2: not valid UTF-8"));
        assert!(InputList::parse("-", b"x\n-", false)
            .unwrap_err()
            .to_string()
            .contains("input list on standard input: line 2"));
        // Resolving names the list and the entry.
        let l = InputList::parse("l.txt", b"\n/nonexist/x.png\n", false).unwrap();
        let msg = l
            .resolve_into(&mut Vec::new(), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("l.txt: line 2: /nonexist/x.png: no such file or directory"),
            "{msg}"
        );
    }

    fn err(input: &str) -> String {
        match resolve(&[input.to_string()], &mut |_| {}) {
            Ok(_) => panic!("{input} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    /// A mistyped path is reported as a missing file, not as an unknown data set; an existing
    /// file of another kind is named with what detect reads.
    #[test]
    fn bad_inputs_are_named_for_what_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        for missing in [
            format!("{d}/upload.png"),
            format!("{d}/scans/"),
            format!("{d}/scans"),
        ] {
            let e = err(&missing);
            assert!(e.contains(&missing) && e.contains("no such file"), "{e}");
        }
        assert!(err("upload.PNG").contains("no such file"));
        let notes = dir.path().join("notes.txt");
        std::fs::write(&notes, "x").unwrap();
        let e = err(notes.to_str().unwrap());
        assert!(
            e.contains("notes.txt") && e.contains("neither an image"),
            "{e}"
        );
        // Bare words stay data specs, with the spec grammar in the message.
        let e = err("mnsit:test");
        assert!(e.contains("unknown data set 'mnsit'"), "{e}");
        // A spec with a path keeps the spec's own error, which names the folder.
        let e = err(&format!("folder:{d}/missing"));
        assert!(e.contains("image folder") && e.contains("missing"), "{e}");
    }

    /// Files and folders given one after another form one segment (batches may span them), so
    /// a shell glob is batched like a folder; a data spec between them starts a new segment.
    #[test]
    fn adjacent_image_inputs_share_batches() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let mut names = Vec::new();
        for (i, d) in [dir.path(), dir.path(), &sub, &sub].iter().enumerate() {
            let p = d.join(format!("{i}.png"));
            image::GrayImage::new(2, 2).save(&p).unwrap();
            names.push(p.display().to_string());
        }
        let inputs = [
            names[0].clone(),
            names[1].clone(),
            sub.display().to_string(),
        ];
        let segs = resolve(&inputs, &mut |_| {}).unwrap();
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0].len(), 4);
        assert_eq!(chunks(&segs, 3).len(), 2);
        let Segment::Images(files) = &segs[0] else {
            panic!("images")
        };
        let got: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(got, names);
    }

    /// A PNG whose header claims `w x h` RGB pixels over a body of a few bytes.
    fn lying_png(w: u32, h: u32) -> Vec<u8> {
        use std::io::Write;
        let chunk = |t: &[u8], d: &[u8]| {
            let mut crc = flate2::Crc::new();
            crc.update(t);
            crc.update(d);
            [
                &(d.len() as u32).to_be_bytes()[..],
                t,
                d,
                &crc.sum().to_be_bytes(),
            ]
            .concat()
        };
        let ihdr = [&w.to_be_bytes()[..], &h.to_be_bytes(), &[8, 2, 0, 0, 0]].concat();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&[0; 100]).unwrap();
        let idat = z.finish().unwrap();
        [
            &b"\x89PNG\r\n\x1a\n"[..],
            &chunk(b"IHDR", &ihdr),
            &chunk(b"IDAT", &idat),
            &chunk(b"IEND", &[]),
        ]
        .concat()
    }

    /// Inputs may come from anyone (`curl ... | libre detect -`): an image whose header claims
    /// more than the loaders' 64 MiB is refused before its pixels are allocated, from a file and
    /// from standard input alike. 10,000 x 10,000 RGB (300 MB) is under the image crate's own
    /// default limit (512 MiB), which `image::open` applied here before.
    #[test]
    fn oversized_images_are_refused_before_decoding() {
        let policy = ImagePolicy {
            resize: true,
            convert_channels: true,
        };
        let want = [1, 28, 28];
        let big = lying_png(10_000, 10_000);
        let e = decode_bytes(&big, Path::new("standard input"), want, policy)
            .unwrap_err()
            .to_string();
        assert!(e.contains("header claims more than the 64 MiB"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("big.png");
        std::fs::write(&f, &big).unwrap();
        let e = decode(&f, want, policy).unwrap_err().to_string();
        assert!(e.contains("big.png") && e.contains("header claims"), "{e}");
        // A small header over the same short body fails as a broken image, not on the limit.
        let e = decode_bytes(&lying_png(28, 28), Path::new("x"), want, policy)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot decode") && !e.contains("header claims"),
            "{e}"
        );
    }
}
