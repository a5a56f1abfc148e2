//! Where and how the process computes: the device (`auto|cpu|cuda[:N]`, CUDA registered on
//! demand), the numeric precision of inference forwards, and the allocator settings that keep
//! freed activation memory in the process.

pub mod alloc;
pub mod device;
pub mod precision;
