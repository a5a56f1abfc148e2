//! A small, self-contained, seedable RNG (SplitMix64 seeding, xoshiro256++ draws).
//!
//! Bootstrap resample `r` of a run with seed `s` uses `Xoshiro256pp::for_stream(s, r)`, so each
//! resample's draws depend only on `(s, r)`: the same numbers whatever the thread count or the
//! order rayon schedules the work in. Kept in-crate (25 lines) rather than pulling `rand` in,
//! because the exact stream is part of the reproducibility contract and must not change with a
//! dependency upgrade.
//!
//! [`splitmix64`] is the workspace's only SplitMix64: the attacks' seeded generator and the
//! training shuffle step it too. It lives here because this crate has no tch, so every other crate
//! can depend on it.

/// One SplitMix64 step (Steele, Lea & Flood 2014): advances `state` and returns the next output.
/// The standard seeding generator for the xoshiro family.
#[inline]
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256++ (Blackman & Vigna), period 2^256 - 1.
#[derive(Debug, Clone)]
pub struct Xoshiro256pp {
    s: [u64; 4],
}

impl Xoshiro256pp {
    /// Seeds the four state words from SplitMix64 started at `seed` (never all zero).
    pub fn seed_from_u64(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Self { s }
    }

    /// An independent stream for sub-task `stream` of a run seeded with `seed`.
    pub fn for_stream(seed: u64, stream: u64) -> Self {
        // Mix the stream index through SplitMix64 first so that neighbouring (seed, stream)
        // pairs start far apart in the state space.
        let mut sm = stream ^ 0xD1B5_4A32_D192_ED03;
        Self::seed_from_u64(seed ^ splitmix64(&mut sm))
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform integer in `0..n` (Lemire's multiply-shift; bias below 2^-64 * n, negligible
    /// for the sample sizes a bootstrap draws from). `n` must be > 0.
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// A uniform float in [0, 1) with 53 random bits.
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_reference_vector() {
        // First outputs of SplitMix64 seeded with 1234567 (from the reference C implementation).
        let mut s = 1234567u64;
        assert_eq!(splitmix64(&mut s), 6457827717110365317);
        assert_eq!(splitmix64(&mut s), 3203168211198807973);
    }

    #[test]
    fn streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(Xoshiro256pp::for_stream(7, 0), |r, _: u64| {
                Some(r.next_u64())
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(Xoshiro256pp::for_stream(7, 0), |r, _: u64| {
                Some(r.next_u64())
            })
            .collect();
        let c: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(Xoshiro256pp::for_stream(7, 1), |r, _: u64| {
                Some(r.next_u64())
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut r = Xoshiro256pp::seed_from_u64(3);
        let mut hist = [0usize; 10];
        for _ in 0..100_000 {
            hist[r.below(10)] += 1;
        }
        for h in hist {
            assert!((9_000..11_000).contains(&h), "{hist:?}");
        }
    }
}
