//! A small, safe Python pickle virtual machine (protocols 0-5) producing a [`Value`] tree.
//!
//! It executes no Python: `GLOBAL`/`STACK_GLOBAL` become [`Value::Global`] names, `REDUCE`,
//! `NEWOBJ` and `BUILD` record the call and its state in a [`Value::Object`], and persistent ids
//! become [`Value::PersId`]. The callers ([`super::torch`], [`super::numpy`]) interpret the few
//! callables they know (`torch._utils._rebuild_tensor_v2`, `numpy.core.multiarray._reconstruct`,
//! ...). Three callables are evaluated here because their results must behave like containers
//! for later opcodes: `collections.OrderedDict()` / `builtins.dict()` (filled by `SETITEMS`),
//! `builtins.list()`, and `_codecs.encode(str, "latin1")`, which is how Python 3 pickles `bytes`
//! at protocol 2.
//!
//! Dicts, lists and objects are shared (`Rc<RefCell<..>>`) because pickles memoise an object
//! *before* `BUILD`/`SETITEMS` fill it and refer to it later by `BINGET` (the MNIST pickle shares
//! one `numpy.dtype` between arrays this way). Byte strings are zero-copy slices of the input.
//!
//! This is the reader docs/design.md section 12 describes; the opcode
//! semantics follow CPython's `Lib/pickle.py` (`_Unpickler`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, Range};
use std::rc::Rc;

/// What went wrong while executing a pickle; the byte offset is that of the failing opcode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickleError {
    /// Byte offset of the opcode (from the start of the pickle stream given to [`Unpickler`]).
    pub offset: usize,
    pub msg: String,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pickle error at byte offset {}: {}",
            self.offset, self.msg
        )
    }
}

impl std::error::Error for PickleError {}

type PResult<T> = std::result::Result<T, PickleError>;

/// A zero-copy slice of the buffer being unpickled (or of an owned buffer for decoded bytes).
#[derive(Clone)]
pub struct Bytes {
    buf: Rc<Vec<u8>>,
    range: Range<usize>,
}

impl Bytes {
    pub fn from_vec(v: Vec<u8>) -> Self {
        let n = v.len();
        Bytes {
            buf: Rc::new(v),
            range: 0..n,
        }
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len() <= 32 {
            write!(f, "b{:?}", String::from_utf8_lossy(self))
        } else {
            write!(f, "<{} bytes>", self.len())
        }
    }
}

/// An object built by `REDUCE`/`NEWOBJ`/`INST`/`OBJ`: the callable (or class), its arguments and
/// the `BUILD` state. `SETITEMS`/`APPENDS` on it (dict or list subclasses) are kept too.
#[derive(Debug, Clone)]
pub struct Object {
    pub callable: Value,
    pub args: Value,
    pub state: Option<Value>,
    pub dict_items: Vec<(Value, Value)>,
    pub list_items: Vec<Value>,
}

/// A Python value as far as a pickle describes it.
#[derive(Clone)]
pub enum Value {
    None,
    Bool(bool),
    /// Python ints; the 80-bit torch magic number needs more than i64.
    Int(i128),
    Float(f64),
    Str(Rc<str>),
    Bytes(Bytes),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    /// An ordered dict (insertion order, as Python 3.7+ and OrderedDict keep it).
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Set(Rc<RefCell<Vec<Value>>>),
    /// `module.name` as named by GLOBAL / STACK_GLOBAL.
    Global {
        module: Rc<str>,
        name: Rc<str>,
    },
    Object(Rc<RefCell<Object>>),
    /// A persistent id (`PERSID`/`BINPERSID`), left for the caller to resolve.
    PersId(Rc<Value>),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let budget = std::cell::Cell::new(DEBUG_MAX_NODES);
        Shown {
            v: self,
            depth: 0,
            budget: &budget,
        }
        .fmt(f)
    }
}

/// How much of a value `{:?}` prints: error messages quote values from untrusted files, and a
/// pickle of a few KB can describe a tree nested thousands deep or a DAG with billions of paths
/// (memoised values shared at every level), so printing stops at these limits with `...`.
const DEBUG_MAX_DEPTH: usize = 8;
const DEBUG_MAX_NODES: usize = 256;
const DEBUG_MAX_ITEMS: usize = 16;

/// A value formatted at most [`DEBUG_MAX_DEPTH`] deep and [`DEBUG_MAX_NODES`] values in all.
struct Shown<'a> {
    v: &'a Value,
    depth: usize,
    budget: &'a std::cell::Cell<usize>,
}

impl<'a> Shown<'a> {
    fn sub(&self, v: &'a Value) -> Shown<'a> {
        Shown {
            v,
            depth: self.depth + 1,
            budget: self.budget,
        }
    }

    fn items<'b>(
        &'b self,
        it: impl Iterator<Item = &'a Value> + 'b,
    ) -> impl Iterator<Item = Shown<'a>> + 'b {
        it.take(DEBUG_MAX_ITEMS).map(|v| self.sub(v))
    }
}

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.depth >= DEBUG_MAX_DEPTH || self.budget.get() == 0 {
            return f.write_str("...");
        }
        self.budget.set(self.budget.get() - 1);
        match self.v {
            Value::None => write!(f, "None"),
            Value::Bool(b) => write!(f, "{}", if *b { "True" } else { "False" }),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Str(s) if s.len() > 64 => write!(f, "<str of {} bytes>", s.len()),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bytes(b) => write!(f, "{b:?}"),
            Value::Tuple(t) => {
                let mut d = f.debug_tuple("");
                for v in self.items(t.iter()) {
                    d.field(&v);
                }
                d.finish()
            }
            Value::List(l) => f
                .debug_list()
                .entries(self.items(l.borrow().iter()))
                .finish(),
            Value::Dict(d) => {
                let d = d.borrow();
                let mut m = f.debug_map();
                for (k, v) in d.iter().take(DEBUG_MAX_ITEMS) {
                    m.entry(&self.sub(k), &self.sub(v));
                }
                m.finish()
            }
            Value::Set(s) => f
                .debug_set()
                .entries(self.items(s.borrow().iter()))
                .finish(),
            Value::Global { module, name } => write!(f, "{module}.{name}"),
            Value::Object(o) => {
                let o = o.borrow();
                write!(f, "{:?}{:?}", self.sub(&o.callable), self.sub(&o.args))?;
                if let Some(s) = &o.state {
                    write!(f, ".__setstate__({:?})", self.sub(s))?;
                }
                Ok(())
            }
            Value::PersId(p) => write!(f, "persid({:?})", self.sub(p)),
        }
    }
}

impl Drop for Value {
    /// Frees nested values with a work list instead of recursion: the derived drop glue would
    /// recurse once per nesting level, and a pickle of N bytes can nest N/2 levels deep (`)`
    /// then TUPLE1 over and over), enough to overflow the stack on a file of a few hundred KB.
    fn drop(&mut self) {
        let mut work = Vec::new();
        self.take_children(&mut work);
        while let Some(mut v) = work.pop() {
            v.take_children(&mut work);
            // `v` is dropped here with no children left, so its own drop finds nothing to do.
        }
    }
}

impl Value {
    /// A short Python-ish type name, for error messages.
    pub fn type_name(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) => "int".into(),
            Value::Float(_) => "float".into(),
            Value::Str(_) => "str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::List(_) => "list".into(),
            Value::Dict(_) => "dict".into(),
            Value::Set(_) => "set".into(),
            Value::Global { module, name } => format!("<class {module}.{name}>"),
            Value::Object(o) => match &o.borrow().callable {
                Value::Global { module, name } => format!("{module}.{name} object"),
                _ => "object".into(),
            },
            Value::PersId(_) => "persistent id".into(),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => i64::try_from(*i).ok(),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            Value::Int(i) => Some(*i != 0),
            _ => None,
        }
    }

    /// The elements of a tuple or a list (copied out: values are cheap `Rc` clones).
    pub fn as_seq(&self) -> Option<Vec<Value>> {
        match self {
            Value::Tuple(t) => Some(t.as_ref().clone()),
            Value::List(l) => Some(l.borrow().clone()),
            _ => None,
        }
    }

    /// `Some((module, name))` when this is a GLOBAL.
    pub fn as_global(&self) -> Option<(&str, &str)> {
        match self {
            Value::Global { module, name } => Some((module, name)),
            _ => None,
        }
    }

    /// The key-value pairs of a dict (or of a dict-subclass object), in insertion order.
    pub fn dict_items(&self) -> Option<Vec<(Value, Value)>> {
        match self {
            Value::Dict(d) => Some(d.borrow().clone()),
            _ => None,
        }
    }

    fn tuple(v: Vec<Value>) -> Value {
        Value::Tuple(Rc::new(v))
    }

    /// Moves the children of a container that nobody else shares into `out` (for [`Drop`]).
    fn take_children(&mut self, out: &mut Vec<Value>) {
        match self {
            Value::Tuple(t) => {
                if let Some(t) = Rc::get_mut(t) {
                    out.append(t);
                }
            }
            Value::List(l) | Value::Set(l) => {
                if let Some(l) = Rc::get_mut(l) {
                    out.append(l.get_mut());
                }
            }
            Value::Dict(d) => {
                if let Some(d) = Rc::get_mut(d) {
                    for (k, v) in d.get_mut().drain(..) {
                        out.push(k);
                        out.push(v);
                    }
                }
            }
            Value::Object(o) => {
                if let Some(o) = Rc::get_mut(o) {
                    let o = o.get_mut();
                    out.push(std::mem::replace(&mut o.callable, Value::None));
                    out.push(std::mem::replace(&mut o.args, Value::None));
                    out.extend(o.state.take());
                    for (k, v) in o.dict_items.drain(..) {
                        out.push(k);
                        out.push(v);
                    }
                    out.append(&mut o.list_items);
                }
            }
            Value::PersId(p) => {
                if let Some(p) = Rc::get_mut(p) {
                    out.push(std::mem::replace(p, Value::None));
                }
            }
            _ => {}
        }
    }

    /// The identity of a mutable container (list, set, dict, object), `None` for other values.
    fn container_id(&self) -> Option<*const ()> {
        match self {
            Value::List(l) | Value::Set(l) => Some(Rc::as_ptr(l) as *const ()),
            Value::Dict(d) => Some(Rc::as_ptr(d) as *const ()),
            Value::Object(o) => Some(Rc::as_ptr(o) as *const ()),
            _ => None,
        }
    }
}

/// Does any of `items` contain `target` (at any depth)? Storing them in `target` would then
/// make a cycle. Python allows self-containing lists and dicts, but no state_dict, NumPy array
/// or MNIST split has one, and refusing them keeps the value tree finite for every walker and
/// free of `Rc` cycles, which would leak. The search is iterative; `budget` (shared by the
/// whole pickle) bounds the values visited, so a file re-inserting a large shared value many
/// times fails instead of taking quadratic time.
fn contains(target: &Value, items: &[&Value], budget: &mut usize) -> Result<bool, String> {
    let Some(id) = target.container_id() else {
        return Ok(false);
    };
    let mut seen: std::collections::HashSet<*const ()> = std::collections::HashSet::new();
    let mut todo: Vec<Value> = items.iter().map(|&v| v.clone()).collect();
    while let Some(v) = todo.pop() {
        let children: Vec<Value> = match &v {
            Value::Tuple(t) => {
                if !seen.insert(Rc::as_ptr(t) as *const ()) {
                    continue;
                }
                t.as_ref().clone()
            }
            Value::PersId(p) => vec![p.as_ref().clone()],
            Value::List(_) | Value::Set(_) | Value::Dict(_) | Value::Object(_) => {
                let me = v.container_id().expect("a container");
                if me == id {
                    return Ok(true);
                }
                if !seen.insert(me) {
                    continue;
                }
                match &v {
                    Value::List(l) | Value::Set(l) => l.borrow().clone(),
                    Value::Dict(d) => d
                        .borrow()
                        .iter()
                        .flat_map(|(k, v)| [k.clone(), v.clone()])
                        .collect(),
                    Value::Object(o) => {
                        let o = o.borrow();
                        let mut c = vec![o.callable.clone(), o.args.clone()];
                        c.extend(o.state.clone());
                        c.extend(
                            o.dict_items
                                .iter()
                                .flat_map(|(k, v)| [k.clone(), v.clone()]),
                        );
                        c.extend(o.list_items.iter().cloned());
                        c
                    }
                    _ => unreachable!(),
                }
            }
            _ => continue,
        };
        *budget = budget.checked_sub(1 + children.len()).ok_or(
            "the pickle shares values too often to check it for cycles (not a state_dict)",
        )?;
        todo.extend(children);
    }
    Ok(false)
}

const MAX_MEMO_GAP: usize = 1 << 24;

/// Executes one pickle from a buffer. Several pickles may follow each other in one buffer (the
/// legacy torch format does this): call [`Unpickler::load`] repeatedly; [`Unpickler::position`]
/// tells where the next one starts.
pub struct Unpickler {
    data: Rc<Vec<u8>>,
    pos: usize,
    /// Offset of `data[0]` in the file, so errors report file offsets.
    base: usize,
}

impl Unpickler {
    /// `base` is the file offset of `data[0]` (0 for a whole-file pickle).
    pub fn new(data: Rc<Vec<u8>>, base: usize) -> Self {
        Unpickler { data, pos: 0, base }
    }

    /// Position (in `data`) just after the last `STOP` executed.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Skips `n` bytes of non-pickle data (legacy torch storages sit between pickles).
    pub fn set_position(&mut self, pos: usize) {
        self.pos = pos;
    }

    pub fn data(&self) -> &Rc<Vec<u8>> {
        &self.data
    }

    fn err(&self, at: usize, msg: impl Into<String>) -> PickleError {
        PickleError {
            offset: self.base + at,
            msg: msg.into(),
        }
    }

    fn take(&mut self, n: usize, op_at: usize, what: &str) -> PResult<Range<usize>> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let r = self.pos..end;
                self.pos = end;
                Ok(r)
            }
            None => Err(self.err(
                op_at,
                format!(
                    "truncated: {what} needs {n} bytes, only {} left",
                    self.data.len() - self.pos.min(self.data.len())
                ),
            )),
        }
    }

    fn take_n<const N: usize>(&mut self, op_at: usize, what: &str) -> PResult<[u8; N]> {
        let r = self.take(N, op_at, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&self.data[r]);
        Ok(a)
    }

    fn read_line(&mut self, op_at: usize, what: &str) -> PResult<String> {
        let rest = &self.data[self.pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.err(
                op_at,
                format!("truncated: {what} has no terminating newline"),
            ));
        };
        // Protocol-0 text arguments are ASCII (or latin1 for STRING reprs): map bytes 1:1.
        let line: String = rest[..nl].iter().map(|&b| b as char).collect();
        self.pos += nl + 1;
        Ok(line)
    }

    fn bytes(&mut self, n: usize, op_at: usize, what: &str) -> PResult<Value> {
        let range = self.take(n, op_at, what)?;
        Ok(Value::Bytes(Bytes {
            buf: self.data.clone(),
            range,
        }))
    }

    fn utf8(&mut self, n: usize, op_at: usize, what: &str) -> PResult<Value> {
        let r = self.take(n, op_at, what)?;
        match std::str::from_utf8(&self.data[r]) {
            Ok(s) => Ok(Value::Str(Rc::from(s))),
            Err(e) => Err(self.err(op_at, format!("{what}: invalid UTF-8 ({e})"))),
        }
    }

    /// Fails if storing `items` in `target` would make a value contain itself.
    fn acyclic(
        &self,
        at: usize,
        op: &str,
        target: &Value,
        items: &[&Value],
        budget: &mut usize,
    ) -> PResult<()> {
        match contains(target, items, budget) {
            Ok(false) => Ok(()),
            Ok(true) => Err(self.err(
                at,
                format!(
                    "{op}: a container would contain itself (cyclic pickles are not supported)"
                ),
            )),
            Err(e) => Err(self.err(at, format!("{op}: {e}"))),
        }
    }

    fn len_u32(&mut self, op_at: usize, what: &str) -> PResult<usize> {
        Ok(u32::from_le_bytes(self.take_n::<4>(op_at, what)?) as usize)
    }

    fn len_u64(&mut self, op_at: usize, what: &str) -> PResult<usize> {
        let n = u64::from_le_bytes(self.take_n::<8>(op_at, what)?);
        usize::try_from(n).map_err(|_| self.err(op_at, format!("{what}: length {n} too large")))
    }

    /// Runs opcodes until `STOP` and returns the value on top of the stack.
    pub fn load(&mut self) -> PResult<Value> {
        let mut stack: Vec<Value> = Vec::new();
        let mut marks: Vec<usize> = Vec::new();
        let mut memo: HashMap<u64, Value> = HashMap::new();
        // Values the cycle checks may visit in this pickle (see `contains`): far above what
        // real files need (each container costs the file a few bytes and is visited once per
        // enclosing container), small enough to bound the time on crafted ones.
        let mut budget = self.data.len().saturating_mul(16).saturating_add(1 << 20);

        macro_rules! pop {
            ($at:expr, $op:expr) => {
                match stack.pop() {
                    Some(v) => v,
                    None => return Err(self.err($at, format!("{}: stack underflow", $op))),
                }
            };
        }
        macro_rules! top {
            ($at:expr, $op:expr) => {
                match stack.last() {
                    Some(v) => v.clone(),
                    None => return Err(self.err($at, format!("{}: empty stack", $op))),
                }
            };
        }
        macro_rules! pop_mark {
            ($at:expr, $op:expr) => {{
                let Some(m) = marks.pop() else {
                    return Err(self.err($at, format!("{}: no MARK on the stack", $op)));
                };
                if m > stack.len() {
                    return Err(self.err($at, format!("{}: MARK beyond the stack", $op)));
                }
                stack.split_off(m)
            }};
        }

        loop {
            let at = self.pos;
            let Some(&op) = self.data.get(self.pos) else {
                return Err(self.err(at, "truncated: the pickle ends before its STOP opcode"));
            };
            self.pos += 1;
            match op {
                // PROTO
                0x80 => {
                    let [p] = self.take_n::<1>(at, "PROTO")?;
                    if p > 5 {
                        return Err(self.err(at, format!("unsupported pickle protocol {p}")));
                    }
                }
                // FRAME: framing is only a read-ahead hint; the opcodes inside are read inline.
                0x95 => {
                    self.take_n::<8>(at, "FRAME")?;
                }
                b'.' => {
                    return match stack.pop() {
                        Some(v) => Ok(v),
                        None => Err(self.err(at, "STOP with an empty stack")),
                    };
                }
                b'(' => marks.push(stack.len()),
                b'0' => {
                    // POP: discards the top item, or a MARK if that is topmost.
                    if marks.last() == Some(&stack.len()) {
                        marks.pop();
                    } else {
                        pop!(at, "POP");
                    }
                }
                b'1' => {
                    let _ = pop_mark!(at, "POP_MARK");
                }
                b'2' => {
                    let v = top!(at, "DUP");
                    stack.push(v);
                }
                // ---- constants and numbers
                b'N' => stack.push(Value::None),
                0x88 => stack.push(Value::Bool(true)),
                0x89 => stack.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.take_n::<4>(at, "BININT")?);
                    stack.push(Value::Int(v as i128));
                }
                b'K' => {
                    let [v] = self.take_n::<1>(at, "BININT1")?;
                    stack.push(Value::Int(v as i128));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take_n::<2>(at, "BININT2")?);
                    stack.push(Value::Int(v as i128));
                }
                0x8a | 0x8b => {
                    let (n, what) = if op == 0x8a {
                        (self.take_n::<1>(at, "LONG1")?[0] as usize, "LONG1")
                    } else {
                        let n = i32::from_le_bytes(self.take_n::<4>(at, "LONG4")?);
                        if n < 0 {
                            return Err(self.err(at, "LONG4 with a negative byte count"));
                        }
                        (n as usize, "LONG4")
                    };
                    let r = self.take(n, at, what)?;
                    let v = le_signed(&self.data[r]).ok_or_else(|| {
                        self.err(at, format!("{what}: integer wider than 128 bits"))
                    })?;
                    stack.push(Value::Int(v));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take_n::<8>(at, "BINFLOAT")?);
                    stack.push(Value::Float(v));
                }
                b'I' => {
                    let line = self.read_line(at, "INT")?;
                    let v = match line.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(
                            s.trim()
                                .parse::<i128>()
                                .map_err(|_| self.err(at, format!("INT: bad literal {s:?}")))?,
                        ),
                    };
                    stack.push(v);
                }
                b'L' => {
                    let line = self.read_line(at, "LONG")?;
                    let s = line.trim().trim_end_matches('L');
                    let v = s
                        .parse::<i128>()
                        .map_err(|_| self.err(at, format!("LONG: bad literal {s:?}")))?;
                    stack.push(Value::Int(v));
                }
                b'F' => {
                    let line = self.read_line(at, "FLOAT")?;
                    let v = line
                        .trim()
                        .parse::<f64>()
                        .map_err(|_| self.err(at, format!("FLOAT: bad literal {line:?}")))?;
                    stack.push(Value::Float(v));
                }
                // ---- strings and bytes
                b'X' => {
                    let n = self.len_u32(at, "BINUNICODE")?;
                    let v = self.utf8(n, at, "BINUNICODE")?;
                    stack.push(v);
                }
                0x8c => {
                    let n = self.take_n::<1>(at, "SHORT_BINUNICODE")?[0] as usize;
                    let v = self.utf8(n, at, "SHORT_BINUNICODE")?;
                    stack.push(v);
                }
                0x8d => {
                    let n = self.len_u64(at, "BINUNICODE8")?;
                    let v = self.utf8(n, at, "BINUNICODE8")?;
                    stack.push(v);
                }
                b'V' => {
                    let line = self.read_line(at, "UNICODE")?;
                    let s = raw_unicode_unescape(&line)
                        .map_err(|e| self.err(at, format!("UNICODE: {e}")))?;
                    stack.push(Value::Str(Rc::from(s)));
                }
                // Python 2 `str` is a byte string: keep the bytes (callers decode latin1 text).
                b'T' => {
                    let n = i32::from_le_bytes(self.take_n::<4>(at, "BINSTRING")?);
                    if n < 0 {
                        return Err(self.err(at, "BINSTRING with a negative length"));
                    }
                    let v = self.bytes(n as usize, at, "BINSTRING")?;
                    stack.push(v);
                }
                b'U' => {
                    let n = self.take_n::<1>(at, "SHORT_BINSTRING")?[0] as usize;
                    let v = self.bytes(n, at, "SHORT_BINSTRING")?;
                    stack.push(v);
                }
                b'S' => {
                    let line = self.read_line(at, "STRING")?;
                    let b =
                        unrepr_string(&line).map_err(|e| self.err(at, format!("STRING: {e}")))?;
                    stack.push(Value::Bytes(Bytes::from_vec(b)));
                }
                b'B' => {
                    let n = self.len_u32(at, "BINBYTES")?;
                    let v = self.bytes(n, at, "BINBYTES")?;
                    stack.push(v);
                }
                b'C' => {
                    let n = self.take_n::<1>(at, "SHORT_BINBYTES")?[0] as usize;
                    let v = self.bytes(n, at, "SHORT_BINBYTES")?;
                    stack.push(v);
                }
                0x8e => {
                    let n = self.len_u64(at, "BINBYTES8")?;
                    let v = self.bytes(n, at, "BINBYTES8")?;
                    stack.push(v);
                }
                0x96 => {
                    let n = self.len_u64(at, "BYTEARRAY8")?;
                    let v = self.bytes(n, at, "BYTEARRAY8")?;
                    stack.push(v);
                }
                0x97 => {
                    return Err(self.err(
                        at,
                        "NEXT_BUFFER: out-of-band buffers (pickle protocol 5) are not supported",
                    ))
                }
                0x98 => {} // READONLY_BUFFER: a flag on the buffer on top; nothing to do.
                // ---- containers
                b')' => stack.push(Value::tuple(Vec::new())),
                b't' => {
                    let items = pop_mark!(at, "TUPLE");
                    stack.push(Value::tuple(items));
                }
                0x85 => {
                    let a = pop!(at, "TUPLE1");
                    stack.push(Value::tuple(vec![a]));
                }
                0x86 => {
                    let b = pop!(at, "TUPLE2");
                    let a = pop!(at, "TUPLE2");
                    stack.push(Value::tuple(vec![a, b]));
                }
                0x87 => {
                    let c = pop!(at, "TUPLE3");
                    let b = pop!(at, "TUPLE3");
                    let a = pop!(at, "TUPLE3");
                    stack.push(Value::tuple(vec![a, b, c]));
                }
                b']' => stack.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
                b'l' => {
                    let items = pop_mark!(at, "LIST");
                    stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'}' => stack.push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
                b'd' => {
                    let items = pop_mark!(at, "DICT");
                    let pairs = pairs(items).map_err(|e| self.err(at, format!("DICT: {e}")))?;
                    stack.push(Value::Dict(Rc::new(RefCell::new(pairs))));
                }
                0x8f => stack.push(Value::Set(Rc::new(RefCell::new(Vec::new())))),
                0x91 => {
                    let items = pop_mark!(at, "FROZENSET");
                    stack.push(Value::Set(Rc::new(RefCell::new(items))));
                }
                b'a' => {
                    let v = pop!(at, "APPEND");
                    let target = top!(at, "APPEND");
                    self.acyclic(at, "APPEND", &target, &[&v], &mut budget)?;
                    append(&target, vec![v]).map_err(|e| self.err(at, format!("APPEND: {e}")))?;
                }
                b'e' => {
                    let items = pop_mark!(at, "APPENDS");
                    let target = top!(at, "APPENDS");
                    let refs: Vec<&Value> = items.iter().collect();
                    self.acyclic(at, "APPENDS", &target, &refs, &mut budget)?;
                    append(&target, items).map_err(|e| self.err(at, format!("APPENDS: {e}")))?;
                }
                0x90 => {
                    let items = pop_mark!(at, "ADDITEMS");
                    let target = top!(at, "ADDITEMS");
                    let refs: Vec<&Value> = items.iter().collect();
                    self.acyclic(at, "ADDITEMS", &target, &refs, &mut budget)?;
                    match &target {
                        Value::Set(s) => s.borrow_mut().extend(items),
                        other => {
                            return Err(self.err(
                                at,
                                format!("ADDITEMS on a {}, not a set", other.type_name()),
                            ))
                        }
                    }
                }
                b's' => {
                    let v = pop!(at, "SETITEM");
                    let k = pop!(at, "SETITEM");
                    let target = top!(at, "SETITEM");
                    self.acyclic(at, "SETITEM", &target, &[&k, &v], &mut budget)?;
                    set_items(&target, vec![(k, v)])
                        .map_err(|e| self.err(at, format!("SETITEM: {e}")))?;
                }
                b'u' => {
                    let items = pop_mark!(at, "SETITEMS");
                    let target = top!(at, "SETITEMS");
                    let refs: Vec<&Value> = items.iter().collect();
                    self.acyclic(at, "SETITEMS", &target, &refs, &mut budget)?;
                    let kv = pairs(items).map_err(|e| self.err(at, format!("SETITEMS: {e}")))?;
                    set_items(&target, kv).map_err(|e| self.err(at, format!("SETITEMS: {e}")))?;
                }
                // ---- memo
                b'q' => {
                    let [i] = self.take_n::<1>(at, "BINPUT")?;
                    memo.insert(i as u64, top!(at, "BINPUT"));
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.take_n::<4>(at, "LONG_BINPUT")?);
                    memo.insert(i as u64, top!(at, "LONG_BINPUT"));
                }
                b'p' => {
                    let line = self.read_line(at, "PUT")?;
                    let i = line
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| self.err(at, format!("PUT: bad index {line:?}")))?;
                    memo.insert(i, top!(at, "PUT"));
                }
                0x94 => {
                    let i = memo.len() as u64;
                    if memo.len() > MAX_MEMO_GAP * 64 {
                        return Err(self.err(at, "MEMOIZE: memo too large"));
                    }
                    memo.insert(i, top!(at, "MEMOIZE"));
                }
                b'h' | b'j' | b'g' => {
                    let (i, what) = match op {
                        b'h' => (self.take_n::<1>(at, "BINGET")?[0] as u64, "BINGET"),
                        b'j' => (
                            u32::from_le_bytes(self.take_n::<4>(at, "LONG_BINGET")?) as u64,
                            "LONG_BINGET",
                        ),
                        _ => {
                            let line = self.read_line(at, "GET")?;
                            let i = line
                                .trim()
                                .parse::<u64>()
                                .map_err(|_| self.err(at, format!("GET: bad index {line:?}")))?;
                            (i, "GET")
                        }
                    };
                    match memo.get(&i) {
                        Some(v) => stack.push(v.clone()),
                        None => {
                            return Err(
                                self.err(at, format!("{what}: memo index {i} was never set"))
                            )
                        }
                    }
                }
                // ---- classes, calls, persistent ids
                b'c' => {
                    let module = self.read_line(at, "GLOBAL")?;
                    let name = self.read_line(at, "GLOBAL")?;
                    stack.push(global(&module, &name));
                }
                0x93 => {
                    let name = pop!(at, "STACK_GLOBAL");
                    let module = pop!(at, "STACK_GLOBAL");
                    match (module.as_str(), name.as_str()) {
                        (Some(m), Some(n)) => stack.push(global(m, n)),
                        _ => return Err(self.err(at, "STACK_GLOBAL: module and name must be str")),
                    }
                }
                0x82..=0x84 => {
                    return Err(self.err(
                        at,
                        format!(
                            "unsupported opcode EXT{} (extension registry)",
                            [1, 2, 4][(op - 0x82) as usize]
                        ),
                    ))
                }
                b'R' => {
                    let args = pop!(at, "REDUCE");
                    let callable = pop!(at, "REDUCE");
                    let v =
                        reduce(callable, args).map_err(|e| self.err(at, format!("REDUCE: {e}")))?;
                    stack.push(v);
                }
                0x81 => {
                    let args = pop!(at, "NEWOBJ");
                    let cls = pop!(at, "NEWOBJ");
                    let v = reduce(cls, args).map_err(|e| self.err(at, format!("NEWOBJ: {e}")))?;
                    stack.push(v);
                }
                0x92 => {
                    let kwargs = pop!(at, "NEWOBJ_EX");
                    let args = pop!(at, "NEWOBJ_EX");
                    let cls = pop!(at, "NEWOBJ_EX");
                    let args = match kwargs.dict_items() {
                        Some(kw) if kw.is_empty() => args,
                        _ => Value::tuple(vec![args, kwargs]),
                    };
                    let v =
                        reduce(cls, args).map_err(|e| self.err(at, format!("NEWOBJ_EX: {e}")))?;
                    stack.push(v);
                }
                b'i' => {
                    let module = self.read_line(at, "INST")?;
                    let name = self.read_line(at, "INST")?;
                    let args = pop_mark!(at, "INST");
                    let v = reduce(global(&module, &name), Value::tuple(args))
                        .map_err(|e| self.err(at, format!("INST: {e}")))?;
                    stack.push(v);
                }
                b'o' => {
                    let mut items = pop_mark!(at, "OBJ");
                    if items.is_empty() {
                        return Err(self.err(at, "OBJ: no class after MARK"));
                    }
                    let cls = items.remove(0);
                    let v = reduce(cls, Value::tuple(items))
                        .map_err(|e| self.err(at, format!("OBJ: {e}")))?;
                    stack.push(v);
                }
                b'b' => {
                    let state = pop!(at, "BUILD");
                    let target = top!(at, "BUILD");
                    match target {
                        Value::Object(ref o) => {
                            self.acyclic(at, "BUILD", &target, &[&state], &mut budget)?;
                            o.borrow_mut().state = Some(state);
                        }
                        // An OrderedDict's state holds instance attributes (torch's
                        // `_metadata`), not items: dropping it loses no tensors.
                        Value::Dict(_) | Value::List(_) | Value::Set(_) => {}
                        other => {
                            return Err(self.err(
                                at,
                                format!("BUILD on a {}, which takes no state", other.type_name()),
                            ))
                        }
                    }
                }
                b'Q' => {
                    let pid = pop!(at, "BINPERSID");
                    stack.push(Value::PersId(Rc::new(pid)));
                }
                b'P' => {
                    let line = self.read_line(at, "PERSID")?;
                    stack.push(Value::PersId(Rc::new(Value::Str(Rc::from(line)))));
                }
                other => {
                    return Err(self.err(
                        at,
                        format!("unsupported opcode 0x{other:02x} ({:?})", other as char),
                    ))
                }
            }
        }
    }
}

fn global(module: &str, name: &str) -> Value {
    // Python 2 pickles name builtins `__builtin__`; Python 3's pickle maps it the same way.
    let module = if module == "__builtin__" {
        "builtins"
    } else {
        module
    };
    Value::Global {
        module: Rc::from(module),
        name: Rc::from(name),
    }
}

/// Little-endian two's-complement integer of up to 16 bytes (LONG1/LONG4 payload).
fn le_signed(b: &[u8]) -> Option<i128> {
    if b.is_empty() {
        return Some(0);
    }
    if b.len() > 16 {
        return None;
    }
    let fill = if b[b.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
    let mut a = [fill; 16];
    a[..b.len()].copy_from_slice(b);
    Some(i128::from_le_bytes(a))
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if items.len() & 1 == 1 {
        return Err(format!(
            "odd number of items ({}) for key/value pairs",
            items.len()
        ));
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn append(target: &Value, items: Vec<Value>) -> Result<(), String> {
    match target {
        Value::List(l) => l.borrow_mut().extend(items),
        Value::Object(o) => o.borrow_mut().list_items.extend(items),
        other => return Err(format!("target is a {}, not a list", other.type_name())),
    }
    Ok(())
}

fn set_items(target: &Value, kv: Vec<(Value, Value)>) -> Result<(), String> {
    match target {
        // Real pickles of dicts never repeat a key, so pushing keeps Python's semantics without
        // a quadratic duplicate search.
        Value::Dict(d) => d.borrow_mut().extend(kv),
        Value::Object(o) => o.borrow_mut().dict_items.extend(kv),
        other => return Err(format!("target is a {}, not a dict", other.type_name())),
    }
    Ok(())
}

/// Applies a callable: the few container constructors are evaluated, everything else is recorded.
fn reduce(callable: Value, args: Value) -> Result<Value, String> {
    if let Some((m, n)) = callable.as_global() {
        let argv = args.as_seq().unwrap_or_default();
        match (m, n) {
            ("collections", "OrderedDict") | ("builtins", "dict") if argv.is_empty() => {
                return Ok(Value::Dict(Rc::new(RefCell::new(Vec::new()))));
            }
            ("collections", "OrderedDict") | ("builtins", "dict") if argv.len() == 1 => {
                // OrderedDict([(k, v), ...]) as older picklers write it.
                let mut kv = Vec::new();
                for item in argv[0].as_seq().unwrap_or_default() {
                    match item.as_seq().as_deref() {
                        Some([k, v]) => kv.push((k.clone(), v.clone())),
                        _ => return Err(format!("{m}.{n}: expected (key, value) pairs")),
                    }
                }
                return Ok(Value::Dict(Rc::new(RefCell::new(kv))));
            }
            ("builtins", "list") if argv.is_empty() => {
                return Ok(Value::List(Rc::new(RefCell::new(Vec::new()))));
            }
            ("builtins", "set") | ("builtins", "frozenset") if argv.is_empty() => {
                return Ok(Value::Set(Rc::new(RefCell::new(Vec::new()))));
            }
            ("_codecs", "encode") => {
                // bytes pickled by Python 3 at protocol <= 2: _codecs.encode(text, "latin1").
                let text = argv
                    .first()
                    .and_then(|v| v.as_str())
                    .ok_or("_codecs.encode: no text")?;
                let enc = argv.get(1).and_then(|v| v.as_str()).unwrap_or("utf-8");
                let bytes = match enc.to_ascii_lowercase().replace('-', "").as_str() {
                    "latin1" | "latin" | "iso88591" => latin1_bytes(text)?,
                    "utf8" => text.as_bytes().to_vec(),
                    other => return Err(format!("_codecs.encode: unsupported encoding {other:?}")),
                };
                return Ok(Value::Bytes(Bytes::from_vec(bytes)));
            }
            _ => {}
        }
    }
    Ok(Value::Object(Rc::new(RefCell::new(Object {
        callable,
        args,
        state: None,
        dict_items: Vec::new(),
        list_items: Vec::new(),
    }))))
}

/// Encodes text as latin1 (every char must be < 256), as Python's `str.encode("latin1")`.
pub fn latin1_bytes(s: &str) -> Result<Vec<u8>, String> {
    s.chars()
        .map(|c| u8::try_from(c as u32).map_err(|_| format!("character {c:?} is not latin1")))
        .collect()
}

/// Decodes Python's `raw-unicode-escape` (protocol-0 UNICODE): only `\uXXXX` and `\UXXXXXXXX`.
fn raw_unicode_unescape(line: &str) -> Result<String, String> {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\\' && i + 1 < chars.len() && (chars[i + 1] == 'u' || chars[i + 1] == 'U') {
            let n = if chars[i + 1] == 'u' { 4 } else { 8 };
            let hex: String = chars
                .get(i + 2..i + 2 + n)
                .ok_or("truncated \\u escape")?
                .iter()
                .collect();
            let cp = u32::from_str_radix(&hex, 16).map_err(|_| format!("bad escape \\u{hex}"))?;
            out.push(char::from_u32(cp).ok_or(format!("bad code point {cp:#x}"))?);
            i += 2 + n;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Parses the Python `repr` of a byte string as the protocol-0 STRING opcode writes it.
fn unrepr_string(line: &str) -> Result<Vec<u8>, String> {
    let b = line.as_bytes();
    if b.len() < 2 || b[0] != b[b.len() - 1] || (b[0] != b'\'' && b[0] != b'"') {
        return Err(format!("not a quoted string: {line:?}"));
    }
    // read_line mapped each byte to one char < 256; map back the same way.
    let inner: Vec<u8> = line[1..line.len() - 1]
        .chars()
        .map(|c| c as u32 as u8)
        .collect();
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        let c = inner[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *inner.get(i + 1).ok_or("dangling backslash")?;
        i += 2;
        match e {
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            b'\\' | b'\'' | b'"' => out.push(e),
            b'x' => {
                let h = inner.get(i..i + 2).ok_or("truncated \\x escape")?;
                let h = std::str::from_utf8(h).map_err(|_| "bad \\x escape")?;
                out.push(u8::from_str_radix(h, 16).map_err(|_| format!("bad escape \\x{h}"))?);
                i += 2;
            }
            b'0'..=b'7' => {
                let mut v = (e - b'0') as u32;
                let mut k = 0;
                while k < 2 && i < inner.len() && (b'0'..=b'7').contains(&inner[i]) {
                    v = v * 8 + (inner[i] - b'0') as u32;
                    i += 1;
                    k += 1;
                }
                out.push(v as u8);
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Ok(out)
}

/// Unpickles one whole buffer holding a single pickle.
pub fn loads(data: Vec<u8>) -> PResult<Value> {
    Unpickler::new(Rc::new(data), 0).load()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_protocol2_dict() {
        // pickle.dumps({'a': 1, 'b': [1.5, None, True]}, protocol=2)
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02]q\x03(G?\xf8\x00\x00\x00\x00\x00\x00N\x88eu.";
        let v = loads(p.to_vec()).unwrap();
        let items = v.dict_items().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].0.as_str(), Some("a"));
        assert_eq!(items[0].1.as_i64(), Some(1));
        let l = items[1].1.as_seq().unwrap();
        assert!(matches!(l[0], Value::Float(x) if x == 1.5));
        assert!(matches!(l[1], Value::None));
        assert_eq!(l[2].as_bool(), Some(true));
    }

    #[test]
    fn protocol0_text_opcodes() {
        // pickle.dumps((1, -7, 2.5, 'hi', u'\u00e9x', 12345678901234567890), protocol=0)
        let p = b"(I1\nI-7\nF2.5\nS'hi'\np0\nV\\u00e9x\np1\nL12345678901234567890L\ntp2\n.";
        let v = loads(p.to_vec()).unwrap();
        let t = v.as_seq().unwrap();
        assert_eq!(t[0].as_i64(), Some(1));
        assert_eq!(t[1].as_i64(), Some(-7));
        assert!(matches!(t[2], Value::Float(x) if x == 2.5));
        assert!(matches!(&t[3], Value::Bytes(b) if &**b == b"hi"));
        assert_eq!(t[4].as_str(), Some("\u{e9}x"));
        assert!(matches!(t[5], Value::Int(i) if i == 12345678901234567890));
    }

    #[test]
    fn long1_magic_and_negative() {
        // The torch legacy magic number 0x1950a86a20f9469cfc6c as LONG1, and LONG1 of -1.
        let p = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";
        assert!(matches!(loads(p.to_vec()).unwrap(), Value::Int(i) if i == 0x1950a86a20f9469cfc6c));
        let p = b"\x80\x02\x8a\x01\xff.";
        assert!(matches!(loads(p.to_vec()).unwrap(), Value::Int(-1)));
    }

    #[test]
    fn memo_shares_objects_built_later() {
        // obj = C(); memoised, then BUILD; a later BINGET must see the state.
        let p = b"\x80\x02cm\nC\nq\x00)Rq\x01K\x07b]q\x02h\x01a\x86.";
        let v = loads(p.to_vec()).unwrap();
        let t = v.as_seq().unwrap();
        let l = t[1].as_seq().unwrap();
        match &l[0] {
            Value::Object(o) => assert_eq!(o.borrow().state.as_ref().unwrap().as_i64(), Some(7)),
            other => panic!("expected object, got {other:?}"),
        }
    }

    #[test]
    fn protocol4_frame_stack_global_memoize() {
        // pickle.dumps(collections.OrderedDict(a=b'xy'), protocol=4)
        let p = b"\x80\x04\x95'\x00\x00\x00\x00\x00\x00\x00\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93\x94)R\x94\x8c\x01a\x94C\x02xy\x94s.";
        let v = loads(p.to_vec()).unwrap();
        let items = v.dict_items().unwrap();
        assert_eq!(items[0].0.as_str(), Some("a"));
        assert!(matches!(&items[0].1, Value::Bytes(b) if &**b == b"xy"));
    }

    #[test]
    fn codecs_encode_gives_bytes() {
        // pickle.dumps(b'\xff\x00', protocol=2) in Python 3
        let p = b"\x80\x02c_codecs\nencode\nq\x00X\x03\x00\x00\x00\xc3\xbf\x00q\x01X\x06\x00\x00\x00latin1q\x02\x86q\x03Rq\x04.";
        assert!(matches!(loads(p.to_vec()).unwrap(), Value::Bytes(ref b) if **b == [0xff, 0]));
    }

    #[test]
    fn unknown_opcode_names_offset() {
        let e = loads(b"\x80\x02K\x01\xff.".to_vec()).unwrap_err();
        assert_eq!(e.offset, 4);
        assert!(e.msg.contains("0xff"), "{e}");
    }

    #[test]
    fn truncated_pickles_fail_cleanly() {
        let full = b"\x80\x02X\x05\x00\x00\x00helloq\x00.".to_vec();
        for n in 0..full.len() {
            let e = loads(full[..n].to_vec()).unwrap_err();
            assert!(e.msg.contains("truncated"), "{n}: {e}");
        }
        assert_eq!(loads(full).unwrap().as_str(), Some("hello"));
    }

    #[test]
    fn cyclic_containers_are_refused() {
        // l = []; l.append(l)
        let e = loads(b"\x80\x02]q\x00h\x00a.".to_vec()).unwrap_err();
        assert!(e.msg.contains("APPEND") && e.msg.contains("itself"), "{e}");
        // d = {}; d[1] = [d]
        let e = loads(b"\x80\x02}q\x00K\x01]h\x00as.".to_vec()).unwrap_err();
        assert!(e.msg.contains("SETITEM") && e.msg.contains("itself"), "{e}");
        // o = C(); o.__setstate__([o])
        let e = loads(b"\x80\x02cm\nC\n)Rq\x00]h\x00ab.".to_vec()).unwrap_err();
        assert!(e.msg.contains("BUILD") && e.msg.contains("itself"), "{e}");
        // Sharing without a cycle is fine: x = []; [x, x]
        let v = loads(b"\x80\x02]q\x00]h\x00ah\x00a.".to_vec()).unwrap();
        assert_eq!(v.as_seq().unwrap().len(), 2);
    }

    #[test]
    fn deep_nesting_drops_and_prints_without_recursion() {
        // A million nested 1-tuples: the derived drop glue recursed once per level and overflowed
        // the stack; printing recursed the same way.
        let mut p = b"\x80\x02)".to_vec();
        p.extend(std::iter::repeat_n(0x85u8, 1_000_000));
        p.push(b'.');
        let v = loads(p).unwrap();
        let shown = format!("{v:?}");
        assert!(
            shown.len() < 200 && shown.ends_with("...,),),),),),),),)"),
            "{shown}"
        );
        drop(v);
    }

    #[test]
    fn printing_a_shared_dag_is_bounded() {
        // x0 = []; x(k+1) = [xk] * 16, 20 levels: 16^20 paths through 21 lists.
        let mut p = b"\x80\x02]q\x00".to_vec();
        for _ in 0..20 {
            p.push(b'(');
            p.extend(b"h\x00".repeat(16));
            p.extend(b"lq\x00");
        }
        p.push(b'.');
        let v = loads(p).unwrap();
        // At most DEBUG_MAX_NODES values, each with DEBUG_MAX_ITEMS entries, are printed.
        assert!(format!("{v:?}").len() < 50_000);
    }

    #[test]
    fn bad_memo_and_mark_errors() {
        assert!(loads(b"\x80\x02h\x05.".to_vec())
            .unwrap_err()
            .msg
            .contains("memo index 5"));
        assert!(loads(b"\x80\x02K\x01t.".to_vec())
            .unwrap_err()
            .msg
            .contains("MARK"));
    }
}
