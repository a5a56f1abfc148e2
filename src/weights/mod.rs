//! Model weights in and out: libre checkpoints (safetensors with the model's configuration in
//! the metadata), PyTorch checkpoints read without Python, and the zoo of pretrained weights
//! fetched from package registries.

pub mod checkpoint;
pub mod import;
pub mod zoo;
