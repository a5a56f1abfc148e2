//! Adversarial attacks.
