//! Random numbers the simulator can repeat: a seeded generator (SplitMix64,
//! so the same seed gives the same run on every machine) and the
//! distributions workloads are written in.

use serde::Serialize;

/// A small, fast, seedable generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// A generator for one purpose (a framework's arrivals…), independent of
    /// the others drawn from the same seed.
    pub fn fork(&self, stream: u64) -> Rng {
        let mut r = Rng(self.0 ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A distribution of non-negative numbers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Dist {
    Constant(f64),
    Exponential {
        mean: f64,
    },
    Uniform {
        min: f64,
        max: f64,
    },
    /// Draws one of these values, each equally likely (an empirical
    /// distribution, e.g. read from a file of observations).
    Empirical(Vec<f64>),
}

impl Dist {
    pub fn sample(&self, rng: &mut Rng) -> f64 {
        match self {
            Dist::Constant(v) => *v,
            Dist::Exponential { mean } => -mean * (1.0 - rng.unit()).ln(),
            Dist::Uniform { min, max } => min + (max - min) * rng.unit(),
            Dist::Empirical(values) => {
                if values.is_empty() {
                    return 0.0;
                }
                let i = (rng.unit() * values.len() as f64) as usize;
                values[i.min(values.len() - 1)]
            }
        }
    }

    pub fn mean(&self) -> f64 {
        match self {
            Dist::Constant(v) => *v,
            Dist::Exponential { mean } => *mean,
            Dist::Uniform { min, max } => (min + max) / 2.0,
            Dist::Empirical(values) => values.iter().sum::<f64>() / values.len().max(1) as f64,
        }
    }

    /// The same distribution with every value multiplied by `k`.
    pub fn scaled(&self, k: f64) -> Dist {
        match self {
            Dist::Constant(v) => Dist::Constant(v * k),
            Dist::Exponential { mean } => Dist::Exponential { mean: mean * k },
            Dist::Uniform { min, max } => Dist::Uniform {
                min: min * k,
                max: max * k,
            },
            Dist::Empirical(values) => Dist::Empirical(values.iter().map(|v| v * k).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_numbers_and_means_hold() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(
            Rng::new(7).fork(1).next_u64(),
            Rng::new(7).fork(2).next_u64()
        );
        let mut r = Rng::new(1);
        let d = Dist::Exponential { mean: 10.0 };
        let mean = (0..20_000).map(|_| d.sample(&mut r)).sum::<f64>() / 20_000.0;
        assert!((mean - 10.0).abs() < 0.5, "{mean}");
        let e = Dist::Empirical(vec![1.0, 2.0, 3.0]);
        assert!((0..100).all(|_| [1.0, 2.0, 3.0].contains(&e.sample(&mut r))));
    }
}
