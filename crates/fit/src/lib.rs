//! Fitting PaDiM's per-patch Gaussians (Defard et al. 2020, section 3.2) in bounded memory.
//!
//! - [`stats`]: per patch, the count, mean and co-moment matrix of the embeddings, updated a batch at
//!   a time in f64 (Welford's algorithm generalised to batches by Chan, Golub and LeVeque's pairwise
//!   formula) and merged exactly across shards with the same formula.
//! - [`subset`]: the random channel subsets PaDiM uses, sampled without replacement from a seed.
//!
//! This crate does no IO: callers feed it embeddings and store what it returns.

pub mod bundle;
pub mod model;
pub mod stage;
pub mod stats;
pub mod subset;

pub use stage::{FitError, FitOptions, FitSummary, run_fit};
pub use stats::{Gaussians, PatchStats, StatsError};
pub use subset::ChannelSubset;
