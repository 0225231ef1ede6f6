//! The simulator's one source of randomness: the crate's SplitMix64, seeded per run.

pub use crate::rng::SplitMix64 as SimRng;
