//! Key choice for the load tool, as YCSB does it (Cooper et al., SoCC 2010): uniform, zipfian
//! (constant 0.99, scrambled so the hot keys are spread over the key space rather than being
//! the lowest numbers), and latest (zipfian over recency: the newest keys are the hottest).
//! Pure and seeded: the same seed gives the same sequence.

/// YCSB's zipfian constant.
pub const ZIPFIAN_CONSTANT: f64 = 0.99;

/// A small seeded generator (xorshift64*): reproducible runs without a dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value, zero included).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A uniform float in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

/// Zipfian over [0, n) by Gray et al.'s method (as YCSB's `ZipfianGenerator`): item 0 is the
/// most popular, item i has weight 1/(i+1)^theta.
#[derive(Clone, Debug)]
pub struct Zipfian {
    n: u64,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
}

fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

impl Zipfian {
    /// A generator over `n` items (n ≥ 1) with the YCSB constant.
    pub fn new(n: u64) -> Zipfian {
        let n = n.max(1);
        let theta = ZIPFIAN_CONSTANT;
        let zeta_2 = zeta(2, theta);
        let zeta_n = zeta(n, theta);
        let eta = (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n);
        Zipfian {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta_n,
            eta,
        }
    }

    /// The next item: 0 is the hottest.
    pub fn next(&self, rng: &mut Rng) -> u64 {
        let u = rng.next_f64();
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.n - 1);
        }
        let item = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        item.min(self.n - 1)
    }
}

/// FNV-1a of an integer, as YCSB scrambles zipfian items over the key space.
fn fnv_hash(value: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in value.to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// How keys are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KeyChoice {
    /// Every key equally likely.
    Uniform,
    /// Zipfian 0.99, scrambled.
    Zipfian,
    /// Zipfian over recency: the most recently inserted keys are hottest.
    Latest,
}

/// Draws key indexes in [0, count) (or, for `Latest`, below the newest key).
#[derive(Clone, Debug)]
pub struct KeyChooser {
    choice: KeyChoice,
    count: u64,
    zipfian: Zipfian,
}

impl KeyChooser {
    /// A chooser over `count` keys.
    pub fn new(choice: KeyChoice, count: u64) -> KeyChooser {
        KeyChooser {
            choice,
            count: count.max(1),
            zipfian: Zipfian::new(count.max(1)),
        }
    }

    /// The next key index; `newest` is the highest key inserted so far (for `Latest`).
    pub fn next(&self, rng: &mut Rng, newest: u64) -> u64 {
        match self.choice {
            KeyChoice::Uniform => rng.below(self.count),
            KeyChoice::Zipfian => fnv_hash(self.zipfian.next(rng)) % self.count,
            KeyChoice::Latest => newest.saturating_sub(self.zipfian.next(rng) % (newest + 1)),
        }
    }
}

/// The key prefix when none is given (YCSB's).
pub const DEFAULT_KEY_PREFIX: &str = "user";

/// The key string of an index, fixed width so keys sort and size alike.
pub fn key_name(prefix: &str, index: u64) -> String {
    format!("{prefix}{index:012}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: zipfian 0.99 is as skewed as theory says: over 1000 items the hottest takes about
    /// 1/zeta(1000) ≈ 13% of draws and the top 10% of items about 70%. Reference: YCSB.
    #[test]
    fn zipfian_draws_follow_the_expected_skew() {
        let n = 1000u64;
        let zipfian = Zipfian::new(n);
        let mut rng = Rng::new(7);
        let draws = 200_000;
        let mut counts = vec![0u64; n as usize];
        for _ in 0..draws {
            counts[zipfian.next(&mut rng) as usize] += 1;
        }
        let hottest = counts[0] as f64 / draws as f64;
        let expected = 1.0 / zeta(n, ZIPFIAN_CONSTANT);
        assert!(
            (hottest - expected).abs() < 0.01,
            "hottest {hottest:.4} vs {expected:.4}"
        );
        let top_tenth: u64 = counts[..100].iter().sum();
        let share = top_tenth as f64 / draws as f64;
        let expected_share = zeta(100, ZIPFIAN_CONSTANT) / zeta(n, ZIPFIAN_CONSTANT);
        assert!(
            (share - expected_share).abs() < 0.02,
            "top 10% share {share:.3} vs {expected_share:.3}"
        );
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[500]);
    }

    /// Goal: scrambling spreads the hot items over the key space but keeps the skew.
    #[test]
    fn scrambled_zipfian_keeps_the_skew_but_moves_the_hot_keys() {
        let chooser = KeyChooser::new(KeyChoice::Zipfian, 1000);
        let mut rng = Rng::new(3);
        let mut counts = vec![0u64; 1000];
        for _ in 0..100_000 {
            counts[chooser.next(&mut rng, 999) as usize] += 1;
        }
        let hottest = counts
            .iter()
            .enumerate()
            .max_by_key(|(_, c)| **c)
            .map(|(i, _)| i)
            .unwrap_or(0);
        assert_ne!(hottest, 0, "the hottest key is no longer key 0");
        let mut sorted = counts.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        assert!(sorted[0] as f64 / 100_000.0 > 0.08, "still skewed");
    }

    /// Goal: `latest` favours the newest keys; `uniform` covers the space evenly.
    #[test]
    fn latest_favours_new_keys_and_uniform_is_flat() {
        let latest = KeyChooser::new(KeyChoice::Latest, 1000);
        let mut rng = Rng::new(5);
        let recent = (0..10_000)
            .filter(|_| latest.next(&mut rng, 999) >= 900)
            .count();
        assert!(recent > 6_000, "{recent} of 10000 draws in the newest 10%");
        let uniform = KeyChooser::new(KeyChoice::Uniform, 10);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[uniform.next(&mut rng, 9) as usize] += 1;
        }
        assert!(
            counts.iter().all(|c| (9_000..11_000).contains(c)),
            "{counts:?}"
        );
    }

    /// Goal: the same seed gives the same sequence (reproducible runs).
    #[test]
    fn same_seed_same_sequence() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
    }
}
