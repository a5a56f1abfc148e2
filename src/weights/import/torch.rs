//! `torch.save` state_dicts without Python: the zip format (torch >= 1.6) and the legacy stream
//! of pickles (torch < 1.6), as docs/design.md section 12 describes.
//!
//! Tensors are `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` calls whose
//! storage is a persistent id `('storage', torch.FloatStorage, key, location, numel[, view])`.
//! Every storage is read on the CPU whatever `location` it names (advertorch's say `cuda:0`), and
//! `stride`/`offset` are honoured, so transposed or sliced tensors come out right (in C order).

use super::numpy::byteswap;
use super::pickle::{Unpickler, Value};
use super::{gather_strided, DType, RawTensor};
use std::collections::HashMap;
use std::io::{Read, Seek};
use std::rc::Rc;

/// The legacy format's magic number (`torch.serialization.MAGIC_NUMBER`).
const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// The legacy format's protocol version (`torch.serialization.PROTOCOL_VERSION`).
const LEGACY_PROTOCOL: i128 = 1001;

/// Which nested dict holds the tensors, and which name prefix to drop.
#[derive(Debug, Clone, Default)]
pub struct Select {
    /// `/`-separated keys leading from the top-level dict to the state_dict (`state_dict`,
    /// `model/ema`); `None` = the top level, or its only tensor-holding dict.
    pub key: Option<String>,
}

/// A tensor as the pickle describes it, before its storage is read.
#[derive(Debug, Clone)]
struct TensorRef {
    storage: StorageRef,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

#[derive(Debug, Clone)]
struct StorageRef {
    key: String,
    dtype: DType,
    /// Element offset into the root storage (legacy views of a bigger storage); 0 otherwise.
    view_offset: usize,
    /// Elements in the (view of the) storage.
    numel: usize,
}

fn storage_dtype(cls: &Value) -> Result<DType, String> {
    let name = match cls.as_global() {
        Some(("torch" | "torch.cuda", name)) => name,
        _ => return Err(format!("unknown storage type {cls:?}")),
    };
    Ok(match name {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        "CharStorage" => DType::I8,
        "ByteStorage" => DType::U8,
        "BoolStorage" => DType::Bool,
        other => {
            return Err(format!(
                "unknown storage type torch.{other} (supported: Float, Double, Half, BFloat16, \
                 Long, Int, Short, Char, Byte, Bool)"
            ))
        }
    })
}

fn usize_of(v: &Value, what: &str) -> Result<usize, String> {
    v.as_i64()
        .and_then(|i| usize::try_from(i).ok())
        .ok_or_else(|| format!("{what} is {v:?}, not a non-negative int"))
}

fn usizes(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    v.as_seq()
        .ok_or_else(|| format!("{what} is a {}, not a tuple", v.type_name()))?
        .iter()
        .map(|d| usize_of(d, what))
        .collect()
}

/// Resolves a persistent id `('storage', type, key, location, numel[, view_metadata])`.
fn storage_ref(pid: &Value) -> Result<StorageRef, String> {
    let t = pid
        .as_seq()
        .ok_or_else(|| format!("persistent id {pid:?} is not a tuple"))?;
    match t.first().and_then(|v| v.as_str()) {
        Some("storage") => {}
        Some("module") => {
            return Err(
                "the file holds a pickled nn.Module, not a state_dict: save \
                        model.state_dict() instead"
                    .into(),
            )
        }
        _ => return Err(format!("unknown persistent id {pid:?}")),
    }
    if t.len() < 5 {
        return Err(format!(
            "storage persistent id with {} fields: {pid:?}",
            t.len()
        ));
    }
    let dtype = storage_dtype(&t[1])?;
    let key = match &t[2] {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        other => return Err(format!("storage key {other:?} is not a string")),
    };
    let numel = usize_of(&t[4], "storage size")?;
    let (view_offset, numel) = match t.get(5) {
        None | Some(Value::None) => (0, numel),
        // Legacy view of a larger storage: (view_key, offset, view_size).
        Some(view) => {
            let v = view
                .as_seq()
                .filter(|v| v.len() == 3)
                .ok_or("bad storage view metadata")?;
            (
                usize_of(&v[1], "storage view offset")?,
                usize_of(&v[2], "storage view size")?,
            )
        }
    };
    Ok(StorageRef {
        key,
        dtype,
        view_offset,
        numel,
    })
}

/// How many wrappers (`nn.Parameter`, tensor subclasses) may sit around a tensor: real files
/// have one or two; a crafted pickle could nest them deep enough to overflow the stack.
const MAX_TENSOR_WRAPPERS: usize = 8;

/// `Some(tensor)` if `v` is a pickled tensor, `None` if it is something else.
fn tensor_ref(v: &Value) -> Option<Result<TensorRef, String>> {
    wrapped_tensor_ref(v, 0)
}

fn wrapped_tensor_ref(v: &Value, depth: usize) -> Option<Result<TensorRef, String>> {
    let Value::Object(o) = v else { return None };
    if depth > MAX_TENSOR_WRAPPERS {
        return Some(Err(format!(
            "more than {MAX_TENSOR_WRAPPERS} nested nn.Parameter / tensor subclass wrappers"
        )));
    }
    let o = o.borrow();
    let (module, name) = o.callable.as_global()?;
    let args = o.args.as_seq().unwrap_or_default();
    match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor" | "_rebuild_tensor_v3") => {
            Some(rebuild_tensor(&args))
        }
        // nn.Parameter(data, requires_grad, hooks[, state]): the data is a tensor.
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            Some(match args.first() {
                Some(inner) => wrapped_tensor_ref(inner, depth + 1)
                    .unwrap_or_else(|| Err("nn.Parameter around a non-tensor".into())),
                None => Err("nn.Parameter without data".into()),
            })
        }
        // Tensor subclasses: _rebuild_from_type_v2(func, type, args, state).
        ("torch._tensor", "_rebuild_from_type_v2") => {
            let (Some(func), Some(inner_args)) = (args.first(), args.get(2)) else {
                return Some(Err("malformed _rebuild_from_type_v2".into()));
            };
            let inner = Value::Object(Rc::new(std::cell::RefCell::new(super::pickle::Object {
                callable: func.clone(),
                args: inner_args.clone(),
                state: None,
                dict_items: Vec::new(),
                list_items: Vec::new(),
            })));
            wrapped_tensor_ref(&inner, depth + 1)
        }
        _ => None,
    }
}

fn rebuild_tensor(args: &[Value]) -> Result<TensorRef, String> {
    if args.len() < 4 {
        return Err(format!("_rebuild_tensor with {} arguments", args.len()));
    }
    let Value::PersId(pid) = &args[0] else {
        return Err(format!(
            "tensor storage is a {}, not a persistent id",
            args[0].type_name()
        ));
    };
    let storage = storage_ref(pid)?;
    let offset = usize_of(&args[1], "storage offset")?;
    let size = usizes(&args[2], "tensor size")?;
    let stride = usizes(&args[3], "tensor stride")?;
    if size.len() != stride.len() {
        return Err(format!(
            "size {size:?} and stride {stride:?} differ in length"
        ));
    }
    Ok(TensorRef {
        storage,
        offset,
        size,
        stride,
    })
}

fn key_name(k: &Value) -> String {
    match k {
        Value::Str(s) => s.to_string(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    }
}

/// Classifies a dict: all its values tensors?
fn tensor_entries(d: &[(Value, Value)]) -> Option<Result<Vec<(String, TensorRef)>, String>> {
    if d.is_empty() || !d.iter().all(|(_, v)| tensor_ref(v).is_some()) {
        return None;
    }
    Some(
        d.iter()
            .map(|(k, v)| {
                let name = key_name(k);
                tensor_ref(v)
                    .expect("checked above")
                    .map(|t| (name.clone(), t))
                    .map_err(|e| format!("tensor {name:?}: {e}"))
            })
            .collect(),
    )
}

fn describe_keys(d: &[(Value, Value)]) -> String {
    let shown: Vec<String> = d
        .iter()
        .take(12)
        .map(|(k, v)| format!("{:?} ({})", key_name(k), v.type_name()))
        .collect();
    let more = if d.len() > 12 {
        format!(", ... {} more", d.len() - 12)
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(", "))
}

/// Named tensors still to be read, and the key path they were found under.
type Selected = (Vec<(String, TensorRef)>, Option<String>);

/// Finds the state_dict inside the unpickled object; returns the tensors and the key path used.
fn select_state_dict(root: &Value, sel: &Select) -> Result<Selected, String> {
    let mut cur = root.clone();
    let mut path: Vec<String> = Vec::new();
    if let Some(key) = &sel.key {
        for part in key.split('/').filter(|p| !p.is_empty()) {
            let items = cur.dict_items().ok_or_else(|| {
                format!(
                    "key {key}: {} is a {}, not a dict",
                    if path.is_empty() {
                        "the top level".to_string()
                    } else {
                        path.join("/")
                    },
                    cur.type_name()
                )
            })?;
            let found = items
                .iter()
                .find(|(k, _)| key_name(k) == part)
                .map(|(_, v)| v.clone());
            cur = found.ok_or_else(|| {
                format!(
                    "key {key}: no key {part:?}; the keys are {}",
                    describe_keys(&items)
                )
            })?;
            path.push(part.to_string());
        }
    }
    let items = match cur.dict_items() {
        Some(items) => items,
        None => {
            // A pickled whole model fails on its 'module' persistent id before reaching here;
            // anything else that is not a dict is not a state_dict.
            return Err(format!(
                "not a state_dict: the pickle holds a {}",
                cur.type_name()
            ));
        }
    };
    if items.is_empty() {
        return Err("not a state_dict: the dict is empty".into());
    }
    if let Some(t) = tensor_entries(&items) {
        return Ok((t?, sel.key.clone()));
    }
    let non_tensor: Vec<&(Value, Value)> = items
        .iter()
        .filter(|(_, v)| tensor_ref(v).is_none())
        .collect();
    if sel.key.is_none() && non_tensor.len() < items.len() {
        let bad: Vec<String> = non_tensor
            .iter()
            .take(8)
            .map(|(k, v)| format!("{:?} ({})", key_name(k), v.type_name()))
            .collect();
        return Err(format!(
            "not a state_dict: entries other than tensors: {}",
            bad.join(", ")
        ));
    }
    if sel.key.is_some() {
        return Err(format!(
            "not a state_dict: key {} leads to a dict with keys {}",
            sel.key.as_deref().unwrap_or(""),
            describe_keys(&items)
        ));
    }
    // A training checkpoint ({"epoch": 3, "state_dict": {...}, "optimizer": {...}}): take the
    // only nested dict of tensors, refuse to guess between several.
    let candidates: Vec<(String, Vec<(Value, Value)>)> = items
        .iter()
        .filter_map(|(k, v)| {
            let d = v.dict_items()?;
            tensor_entries(&d).map(|_| (key_name(k), d))
        })
        .collect();
    match candidates.len() {
        1 => {
            let (k, d) = &candidates[0];
            let t = tensor_entries(d).expect("checked")?;
            Ok((t, Some(k.clone())))
        }
        0 => Err(format!(
            "not a state_dict: no dict of tensors among the keys {}",
            describe_keys(&items)
        )),
        _ => Err(format!(
            "several dicts of tensors ({}): choose one by its key",
            candidates
                .iter()
                .map(|(k, _)| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Copies the tensor's elements (honouring offset and strides) out of its storage bytes.
fn materialise(name: &str, t: &TensorRef, storage: &[u8], swap: bool) -> Result<RawTensor, String> {
    let elt = t.storage.dtype.size();
    let root_numel = storage.len() / elt;
    let end = match t.storage.view_offset.checked_add(t.storage.numel) {
        Some(end) if end <= root_numel => end,
        _ => {
            return Err(format!(
                "truncated storage {:?}: tensor {name:?} needs {} + {} elements, the file holds {}",
                t.storage.key, t.storage.view_offset, t.storage.numel, root_numel
            ))
        }
    };
    let view = &storage[t.storage.view_offset * elt..end * elt];
    let mut data = gather_strided(view, elt, t.offset, &t.size, &t.stride)
        .map_err(|e| format!("tensor {name:?} (storage {:?}): {e}", t.storage.key))?;
    if swap {
        byteswap(&mut data, elt);
    }
    Ok(RawTensor {
        dtype: t.storage.dtype,
        shape: t.size.clone(),
        data,
    })
}

/// What [`load_zip`] / [`load_legacy`] found.
pub struct StateDictTensors {
    pub tensors: Vec<(String, RawTensor)>,
    /// The key path of the nested state_dict, when it was not the top level.
    pub source_key: Option<String>,
}

/// Reads a zip-format checkpoint: `<root>/data.pkl` and `<root>/data/<key>`.
pub fn load_zip<R: Read + Seek>(reader: R, sel: &Select) -> Result<StateDictTensors, String> {
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| format!("not a valid zip: {e}"))?;
    let pkl_name = zip
        .file_names()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.len())
        .map(str::to_string)
        .ok_or("a zip without data.pkl: not a torch.save checkpoint")?;
    let root = pkl_name.strip_suffix("data.pkl").unwrap_or("").to_string();
    let read = |zip: &mut zip::ZipArchive<R>, name: &str| -> Result<Vec<u8>, String> {
        let mut f = zip.by_name(name).map_err(|e| format!("{name}: {e}"))?;
        // The size is the zip header's claim: a hint, capped so a forged one cannot make us
        // reserve gigabytes up front (the real data still grows the buffer as it is read).
        let mut buf = Vec::with_capacity(f.size().min(super::ZIP_SIZE_HINT_CAP) as usize);
        f.read_to_end(&mut buf)
            .map_err(|e| format!("{name}: {e}"))?;
        Ok(buf)
    };
    let pkl = read(&mut zip, &pkl_name)?;
    let obj = Unpickler::new(Rc::new(pkl), 0)
        .load()
        .map_err(|e| format!("{pkl_name}: {e}"))?;
    let swap = match read(&mut zip, &format!("{root}byteorder")) {
        Ok(b) => match String::from_utf8_lossy(&b).trim() {
            "little" => false,
            "big" => true,
            other => return Err(format!("{root}byteorder says {other:?}")),
        },
        Err(_) => false, // files before torch 1.13 have no byteorder entry: little endian.
    };
    let (refs, source_key) = select_state_dict(&obj, sel)?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut tensors = Vec::with_capacity(refs.len());
    for (name, t) in refs {
        if !storages.contains_key(&t.storage.key) {
            let entry = format!("{root}data/{}", t.storage.key);
            let bytes = read(&mut zip, &entry).map_err(|e| {
                format!(
                    "storage {:?} of tensor {name:?} is missing or unreadable: {e}",
                    t.storage.key
                )
            })?;
            storages.insert(t.storage.key.clone(), bytes);
        }
        let raw = materialise(&name, &t, &storages[&t.storage.key], swap)?;
        tensors.push((name, raw));
    }
    Ok(StateDictTensors {
        tensors,
        source_key,
    })
}

/// Is this the start of a legacy checkpoint (protocol-2 pickle of the LONG1 magic number)?
pub fn is_legacy(head: &[u8]) -> bool {
    head.len() >= 14 && head[..4] == [0x80, 0x02, 0x8a, 0x0a] && {
        let mut a = [0u8; 16];
        a[..10].copy_from_slice(&head[4..14]);
        i128::from_le_bytes(a) == LEGACY_MAGIC
    }
}

/// Reads a legacy checkpoint: magic, protocol, sys info, the object, the storage keys, then per
/// storage (in key-list order) an 8-byte little-endian element count and the raw data.
pub fn load_legacy(data: Vec<u8>, sel: &Select) -> Result<StateDictTensors, String> {
    let mut up = Unpickler::new(Rc::new(data), 0);
    let magic = up.load().map_err(|e| format!("magic number: {e}"))?;
    if !matches!(magic, Value::Int(LEGACY_MAGIC)) {
        return Err("not a legacy torch checkpoint (wrong magic number)".into());
    }
    let proto = up.load().map_err(|e| format!("protocol version: {e}"))?;
    if !matches!(proto, Value::Int(LEGACY_PROTOCOL)) {
        return Err(format!("unsupported legacy protocol version {proto:?}"));
    }
    let sys_info = up.load().map_err(|e| format!("system info: {e}"))?;
    let little = sys_info
        .dict_items()
        .and_then(|d| {
            d.iter()
                .find(|(k, _)| k.as_str() == Some("little_endian"))
                .and_then(|(_, v)| v.as_bool())
        })
        .unwrap_or(true);
    let obj = up.load().map_err(|e| format!("object pickle: {e}"))?;
    let keys_v = up.load().map_err(|e| format!("storage key list: {e}"))?;
    let keys: Vec<String> = keys_v
        .as_seq()
        .ok_or("storage key list is not a list")?
        .iter()
        .map(key_name)
        .collect();
    let (refs, source_key) = select_state_dict(&obj, sel)?;
    // The storage types come from the persistent ids; the data runs in key-list order.
    let mut dtypes: HashMap<&str, DType> = HashMap::new();
    for (_, t) in &refs {
        dtypes.insert(&t.storage.key, t.storage.dtype);
    }
    let buf = up.data().clone();
    let mut pos = up.position();
    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    for key in &keys {
        let Some(&dtype) = dtypes.get(key.as_str()) else {
            // Only storages of tensors outside the chosen dict have no known type; the data
            // after them cannot be located, so stop here (and fail below if it was needed).
            break;
        };
        let head = buf.get(pos..pos + 8).ok_or_else(|| {
            format!("truncated storage {key:?}: its size header at byte {pos} is cut off")
        })?;
        let mut n8 = [0u8; 8];
        n8.copy_from_slice(head);
        let numel = if little {
            u64::from_le_bytes(n8)
        } else {
            u64::from_be_bytes(n8)
        } as usize;
        let nbytes = numel
            .checked_mul(dtype.size())
            .ok_or_else(|| format!("storage {key:?}: absurd size {numel}"))?;
        let start = pos + 8;
        let body = start
            .checked_add(nbytes)
            .and_then(|end| buf.get(start..end));
        let body = body.ok_or_else(|| {
            format!(
                "truncated storage {key:?}: {numel} elements of {} = {nbytes} bytes announced at \
                 byte {start}, only {} left",
                dtype.name(),
                buf.len().saturating_sub(start)
            )
        })?;
        storages.insert(key.clone(), body);
        pos = start + nbytes;
    }
    let mut tensors = Vec::with_capacity(refs.len());
    for (name, t) in refs {
        let storage = storages.get(&t.storage.key).ok_or_else(|| {
            format!(
                "storage {:?} of tensor {name:?} is not in the file",
                t.storage.key
            )
        })?;
        let raw = materialise(&name, &t, storage, !little)?;
        tensors.push((name, raw));
    }
    Ok(StateDictTensors {
        tensors,
        source_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn storage_sizes_near_usize_max_are_errors() {
        // legacy_two_dicts.pt: storage "0" is announced as 4 floats [0.25, -0.75, 1.5, 3.0].
        let mut f = include_bytes!("../../../tests/fixtures/import/legacy_two_dicts.pt").to_vec();
        let mut head = 4u64.to_le_bytes().to_vec();
        head.extend(0.25f32.to_le_bytes());
        let at = f.windows(12).position(|w| w == head).expect("storage 0");
        // numel * 4 fits usize, start + numel * 4 does not (this overflowed).
        f[at..at + 8].copy_from_slice(&(u64::MAX / 4).to_le_bytes());
        let model = Select {
            key: Some("model".into()),
        };
        let e = load_legacy(f, &model).err().unwrap();
        assert!(e.contains("truncated storage"), "{e}");

        // A legacy view at an offset near usize::MAX (this overflowed).
        let t = TensorRef {
            storage: StorageRef {
                key: "0".into(),
                dtype: DType::F32,
                view_offset: usize::MAX,
                numel: 2,
            },
            offset: 0,
            size: vec![1],
            stride: vec![1],
        };
        let e = materialise("w", &t, &[0; 16], false).unwrap_err();
        assert!(e.contains("truncated storage"), "{e}");
    }

    #[test]
    fn deeply_wrapped_parameters_are_an_error() {
        // nn.Parameter(nn.Parameter(...)) nested 10,000 deep recursed once per level.
        let mut v = Value::None;
        for _ in 0..10_000 {
            v = Value::Object(Rc::new(RefCell::new(super::super::pickle::Object {
                callable: Value::Global {
                    module: Rc::from("torch._utils"),
                    name: Rc::from("_rebuild_parameter"),
                },
                args: Value::Tuple(Rc::new(vec![v])),
                state: None,
                dict_items: Vec::new(),
                list_items: Vec::new(),
            })));
        }
        let e = tensor_ref(&v).unwrap().unwrap_err();
        assert!(e.contains("nested"), "{e}");
    }
}
