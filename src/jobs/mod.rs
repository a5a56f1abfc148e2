//! Jobs and their outputs: run directories with the provenance recorded next to every output,
//! and one job split into N deterministic parts for a cluster scheduler.

pub mod run;
pub mod shard;
