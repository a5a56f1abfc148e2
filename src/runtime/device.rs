//! Device selection: `--device auto|cpu|cuda[:N]`.
//!
//! The binary links only libtorch_cpu and libc10 (the lean libtorch), so CUDA is not registered by
//! itself. When CUDA is asked for we `dlopen("libtorch_cuda.so", RTLD_NOW | RTLD_GLOBAL)`, which
//! registers the CUDA backend (verified on the lent H100/H200 machines, docs/design.md
//! section 13). Without that step tch silently falls back to the CPU; we detect it and fail with a
//! clear message.

use crate::{Error, Result};
use std::str::FromStr;
use tch::Device;

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(Error::param(
                    "device",
                    s,
                    "unknown device: expected auto, cpu, cuda or cuda:N",
                )),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Try to register libtorch's CUDA backend. Returns the dlopen error text on failure.
fn load_cuda_backend() -> std::result::Result<(), String> {
    use std::sync::OnceLock;
    static LOADED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let name = std::ffi::CString::new("libtorch_cuda.so").unwrap();
            // SAFETY: dlopen with a valid C string; the handle is intentionally leaked so the
            // backend stays registered for the life of the process.
            let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if handle.is_null() {
                // SAFETY: dlerror returns a thread-local C string or null.
                let err = unsafe { libc::dlerror() };
                let msg = if err.is_null() {
                    "unknown dlopen error".to_string()
                } else {
                    unsafe { std::ffi::CStr::from_ptr(err) }
                        .to_string_lossy()
                        .into_owned()
                };
                Err(msg)
            } else {
                Ok(())
            }
        })
        .clone()
}

/// Resolve a spec to a tch device. `Auto` picks CUDA when the backend loads and a GPU is visible,
/// otherwise the CPU; the caller should print the choice.
pub fn resolve(spec: DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto => {
            if load_cuda_backend().is_ok() && tch::Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                Ok(Device::Cpu)
            }
        }
        DeviceSpec::Cuda(n) => {
            if let Err(e) = load_cuda_backend() {
                return Err(Error::param(
                    "device",
                    format!("cuda:{n}"),
                    format!(
                        "libtorch's CUDA backend could not be loaded ({e}); on the GPU machine set \
                         LD_LIBRARY_PATH to PyTorch's torch/lib (README, GPU use)"
                    ),
                ));
            }
            let count = tch::Cuda::device_count();
            if count <= 0 {
                return Err(Error::param(
                    "device",
                    format!("cuda:{n}"),
                    "no CUDA device is visible (use the CPU)",
                ));
            }
            if n as i64 >= count {
                return Err(Error::param(
                    "device",
                    format!("cuda:{n}"),
                    format!("only {count} CUDA device(s) exist"),
                ));
            }
            Ok(Device::Cuda(n))
        }
    }
}

/// Human name of a device, as printed in configs and reports.
pub fn name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}"),
    }
}

/// Errors unless `d` can run `p`: a small matmul and convolution at that precision, so a device
/// without the kernels fails here with its name rather than in the middle of a run.
pub fn check_precision(d: Device, p: crate::runtime::precision::Precision) -> Result<()> {
    let k = p.kind();
    let ok = tch::no_grad(|| {
        let x = tch::Tensor::ones([1, 1, 3, 3], (k, d)).f_conv2d(
            &tch::Tensor::ones([2, 1, 3, 3], (k, d)),
            None::<tch::Tensor>,
            [1, 1],
            [1, 1],
            [1, 1],
            1,
        )?;
        x.reshape([2, 9])
            .f_matmul(&tch::Tensor::ones([9, 2], (k, d)))
    });
    ok.map(|_| ()).map_err(|e| {
        Error::invalid(format!(
            "precision {p} is not available on {}: {e}",
            name(d)
        ))
    })
}

/// Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16, what oneDNN uses);
/// elsewhere libtorch emulates bf16 in float32 and it is slower than float32.
pub fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| {
                s.lines().find(|l| l.starts_with("flags")).is_some_and(|l| {
                    l.split_whitespace()
                        .any(|f| f == "avx512_bf16" || f == "amx_bf16")
                })
            })
            .unwrap_or(false)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Bytes of memory the device can still give, when known: the kernel's `MemAvailable` for the
/// CPU (Linux); None elsewhere (CUDA reports its own out-of-memory errors, which tch returns).
pub fn available_bytes(d: Device) -> Option<u64> {
    if d != Device::Cpu {
        return None;
    }
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses an allocation of `bytes` for `what` that cannot fit in the device's available memory,
/// before libtorch tries (and aborts, or the kernel kills the process).
pub fn check_fits(d: Device, bytes: u64, what: &str) -> Result<()> {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    match available_bytes(d) {
        Some(avail) if bytes > avail => Err(Error::invalid(format!(
            "{what} needs about {:.1} GiB, and {} has {:.1} GiB available",
            gib(bytes),
            name(d),
            gib(avail)
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        let e = "gpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(e.contains("device = gpu: unknown device"), "{e}");
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn cpu_resolves() {
        assert_eq!(resolve(DeviceSpec::Cpu).unwrap(), Device::Cpu);
    }
}
