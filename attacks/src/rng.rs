//! Seeded randomness for the attacks.
//!
//! Every random draw of an attack (random starts, DI-MIM's resize and padding, SPSA's Rademacher
//! directions) comes from this small SplitMix64 generator (its step is
//! [`libre_reports::rng::splitmix64`], shared with the bootstrap's seeding and the training
//! shuffle), seeded from the `seed` argument of [`crate::Attack::perturb`], and is fed to libtorch
//! with `Tensor::from_slice`. We do not use `tch::manual_seed` + `Tensor::rand`: libtorch's default
//! generator is process-global, so two attacks running in parallel (e.g. parallel tests) would
//! interleave their draws, and CPU and CUDA generators give different streams. With this generator
//! the same seed gives the same perturbation on any device and any thread. (A victim that samples,
//! e.g. a Bayesian network, draws its own randomness; reproducing its attacks is the victim's
//! business.)

use libre_reports::rng::splitmix64;
use tch::{Device, Kind, Tensor};

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, fast, and passes BigCrush, which is more than the
/// attacks need. The seed is whitened with a fixed constant before the first step.
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    /// A generator whose whole stream is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        SeededRng {
            state: seed ^ 0x5851_f42d_4c95_7f2d,
        }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.state)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `lo..=hi` (`lo <= hi`).
    pub fn int_inclusive(&mut self, lo: i64, hi: i64) -> i64 {
        debug_assert!(lo <= hi);
        let span = (hi - lo) as u64 + 1;
        lo + (self.next_u64() % span) as i64
    }

    /// Tensor of i.i.d. U(lo, hi) values of the given shape, kind and device.
    pub fn uniform(
        &mut self,
        shape: &[i64],
        lo: f64,
        hi: f64,
        kind: Kind,
        device: Device,
    ) -> Tensor {
        let n: i64 = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| (lo + (hi - lo) * self.next_f64()) as f32)
            .collect();
        Tensor::from_slice(&data)
            .reshape(shape)
            .to_kind(kind)
            .to_device(device)
    }

    /// Tensor of i.i.d. standard normal values (Box-Muller).
    pub fn normal(&mut self, shape: &[i64], kind: Kind, device: Device) -> Tensor {
        let n: i64 = shape.iter().product();
        let mut data: Vec<f32> = Vec::with_capacity(n as usize);
        while (data.len() as i64) < n {
            // 1 - u keeps the argument of ln in (0, 1].
            let u1 = 1.0 - self.next_f64();
            let u2 = self.next_f64();
            let r = (-2.0 * u1.ln()).sqrt();
            let t = 2.0 * std::f64::consts::PI * u2;
            data.push((r * t.cos()) as f32);
            data.push((r * t.sin()) as f32);
        }
        data.truncate(n as usize);
        Tensor::from_slice(&data)
            .reshape(shape)
            .to_kind(kind)
            .to_device(device)
    }

    /// Tensor of i.i.d. Rademacher (+1 / -1) values; 64 signs per 64-bit draw.
    pub fn rademacher(&mut self, shape: &[i64], kind: Kind, device: Device) -> Tensor {
        let n = shape.iter().product::<i64>() as usize;
        let mut data: Vec<f32> = Vec::with_capacity(n);
        while data.len() < n {
            let bits = self.next_u64();
            let take = (n - data.len()).min(64);
            data.extend((0..take).map(|i| if (bits >> i) & 1 == 1 { 1.0f32 } else { -1.0 }));
        }
        Tensor::from_slice(&data)
            .reshape(shape)
            .to_kind(kind)
            .to_device(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_pinned() {
        // Seeded attack outputs (and the results documented from them) depend on these exact
        // numbers. Whitening 1234567 ^ constant leaves SplitMix64 started at 1234567, whose first
        // outputs are the reference C implementation's.
        let mut r = SeededRng::new(1234567 ^ 0x5851_f42d_4c95_7f2d);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
        let mut r = SeededRng::new(0);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                13441156890354882375,
                475488058270310618,
                17489009512603453930
            ]
        );
    }

    #[test]
    fn same_seed_same_stream_and_seeds_differ() {
        let a: Vec<u64> = {
            let mut r = SeededRng::new(7);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = SeededRng::new(7);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let mut r = SeededRng::new(8);
            (0..5).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn moments_are_plausible() {
        let mut r = SeededRng::new(1);
        let u = r.uniform(&[20_000], -2.0, 2.0, Kind::Float, Device::Cpu);
        assert!(u.min().double_value(&[]) >= -2.0 && u.max().double_value(&[]) < 2.0);
        assert!(u.mean(Kind::Float).double_value(&[]).abs() < 0.05);
        let s = r.rademacher(&[20_000], Kind::Float, Device::Cpu);
        assert_eq!(s.abs().min().double_value(&[]), 1.0);
        assert!(s.mean(Kind::Float).double_value(&[]).abs() < 0.03);
        let g = r.normal(&[20_001], Kind::Float, Device::Cpu);
        assert!(g.mean(Kind::Float).double_value(&[]).abs() < 0.03);
        assert!((g.std(true).double_value(&[]) - 1.0).abs() < 0.03);
        for _ in 0..100 {
            let k = r.int_inclusive(3, 5);
            assert!((3..=5).contains(&k));
        }
    }
}
