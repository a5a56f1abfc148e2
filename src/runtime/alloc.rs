//! Keeping freed activation memory in the process instead of returning it to the kernel.
//!
//! libtorch allocates CPU tensors with the C library's allocator. glibc serves every block above
//! its mmap threshold (128 KiB, growing to at most 32 MiB) with a fresh `mmap` and unmaps it on
//! free, and it trims the top of the heap above 128 KiB. A ResNet forward at 224 px allocates and
//! frees activations of 10-50 MB per layer, so every forward maps them anew and the kernel zeroes
//! each 4 KiB page on first touch: 1.6 M page faults per ResNet-50 forward at batch 16 and 2.4 M
//! for the 20-member last-block ensemble, measured with `/usr/bin/time` (docs/results.md, "Issue
//! 14, third round"). Raising both thresholds lets glibc reuse the freed blocks: 0.17 M faults and
//! a 1.2-1.6x faster forward on the 2-core CPU machines. The cost is that the process keeps its
//! peak heap until it exits, which is what a batch tool that runs one model at a time wants.
//! The forwards run on the main thread, whose heap can grow without bound; glibc's per-thread
//! arenas hold blocks up to 64 MiB and map larger ones whatever the threshold.
//!
//! PyTorch does not do this by itself; a PyTorch user gets the same effect by exporting
//! `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_` (glibc's own tunables).

/// Largest block glibc still serves from `mmap` once [`keep_freed_memory`] has run, and the free
/// top-of-heap size above which it trims: 1 GiB, far above any single activation we allocate,
/// within `mallopt`'s `int` argument.
pub const THRESHOLD_BYTES: i32 = 1 << 30;

/// What [`keep_freed_memory`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllocTuning {
    /// Both thresholds raised.
    Applied,
    /// Left alone: the user set glibc's own `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_`
    /// (or `GLIBC_TUNABLES`), or `LIBRE_MALLOC_TUNING=0` (also `false`, `off`, `no`).
    UserChoice,
    /// Not glibc (musl, macOS): nothing to do, or `mallopt` refused a value.
    Unsupported,
}

static TUNING: std::sync::OnceLock<AllocTuning> = std::sync::OnceLock::new();

/// Raise glibc's mmap and trim thresholds (see the module docs) unless the user chose allocator
/// settings. Call once, early in `main`; it is process-wide and does not depend on libtorch being
/// loaded. Later calls return the first call's outcome.
pub fn keep_freed_memory() -> AllocTuning {
    *TUNING.get_or_init(|| {
        if user_chose(|k| std::env::var_os(k)) {
            AllocTuning::UserChoice
        } else {
            apply()
        }
    })
}

/// What [`keep_freed_memory`] did in this process, `None` before it ran (recorded in run
/// provenance: timings depend on it).
pub fn current() -> Option<AllocTuning> {
    TUNING.get().copied()
}

/// Whether the environment (read through `get`) holds the user's own allocator choice.
fn user_chose(get: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    get("LIBRE_MALLOC_TUNING").is_some_and(|v| {
        let v = v.to_string_lossy().to_ascii_lowercase();
        matches!(v.trim(), "0" | "false" | "off" | "no")
    }) || [
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
        "GLIBC_TUNABLES",
    ]
    .iter()
    .any(|k| get(k).is_some())
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> AllocTuning {
    // SAFETY: mallopt only changes the allocator's parameters; it is safe to call at any time.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD_BYTES) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD_BYTES) == 1
    };
    if ok {
        AllocTuning::Applied
    } else {
        AllocTuning::Unsupported
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> AllocTuning {
    AllocTuning::Unsupported
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn the_users_allocator_settings_win() {
        assert!(!user_chose(env(&[])));
        assert!(!user_chose(env(&[("LIBRE_MALLOC_TUNING", "1")])));
        assert!(user_chose(env(&[("LIBRE_MALLOC_TUNING", "0")])));
        assert!(user_chose(env(&[("LIBRE_MALLOC_TUNING", "Off")])));
        assert!(user_chose(env(&[("LIBRE_MALLOC_TUNING", "false")])));
        assert!(user_chose(env(&[("MALLOC_MMAP_THRESHOLD_", "65536")])));
        assert!(user_chose(env(&[("MALLOC_TRIM_THRESHOLD_", "0")])));
        assert!(user_chose(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.arena_max=2"
        )])));
    }

    /// glibc accepts the thresholds (mallopt returns 0 for a value it refuses, e.g. a mmap
    /// threshold above its limit on older versions), and freed large blocks are reused afterwards.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_accepts_the_thresholds_and_reuses_large_blocks() {
        assert_eq!(apply(), AllocTuning::Applied);
        // An 8 MiB block freed and allocated again comes back from the heap, not a new mapping:
        // the second allocation touches no new pages (2,048 without the thresholds). 8 MiB, not
        // more: test threads allocate from a per-thread arena, whose heaps hold at most 64 MiB,
        // and larger blocks are mapped whatever the threshold.
        let faults = || {
            let mut u: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
            u.ru_minflt
        };
        let touch = || {
            let v = vec![1u8; 8 << 20];
            std::hint::black_box(&v);
        };
        touch();
        let before = faults();
        touch();
        let again = faults() - before;
        assert!(
            again < 1000,
            "{again} page faults re-allocating a freed 8 MiB block"
        );
    }
}
