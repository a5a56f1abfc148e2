//! The fast-path switch: shape-specific kernels of the sample axis (a 1x1-map conv as a matmul,
//! batch norm over S weights, separable max pooling) that compute what the general op does,
//! faster. Off, every layer runs its general op: the oracle the fast paths are tested against
//! (`tests/fast_paths.rs`).

use std::sync::atomic::{AtomicBool, Ordering};

static FAST_PATHS: AtomicBool = AtomicBool::new(true);

/// Turns the shape-specific fast paths of the sample axis on or off (on by default); returns the
/// previous setting. Off, every S-weight conv runs as one grouped conv: the reference the fast
/// paths are tested against.
pub fn set_fast_paths(on: bool) -> bool {
    FAST_PATHS.swap(on, Ordering::Relaxed)
}

/// Whether the fast paths are on (see [`set_fast_paths`]).
pub fn fast_paths() -> bool {
    FAST_PATHS.load(Ordering::Relaxed)
}
