//! Fitting PaDiM's per-patch Gaussians (Defard et al. 2020, section 3.2) in bounded memory.
//!
//! - [`stats`]: per patch, the count, mean and co-moment matrix of the embeddings, updated a batch at
//!   a time in f64 (Welford's algorithm generalised to batches by Chan, Golub and LeVeque's pairwise
//!   formula) and merged exactly across shards with the same formula.
//! - [`stage`]: the stage: partial states per extract shard, merged, one model per channel subset
//!   (subsets are resolved by `padim_core::channels`).
//!
//! The numerics do no IO: callers feed it embeddings and store what it returns.

pub mod blas;
pub mod bundle;
pub mod model;
pub mod nearest;
pub mod stage;
pub mod stats;

pub use padim_core::channels::ChannelSubset;
pub use stage::{FitError, FitOptions, FitSummary, run_fit};
pub use stats::{Gaussians, PatchStats, StatsError};

/// Makes OpenBLAS run each call on the calling thread. padim parallelises the linear algebra over
/// patches (rayon) and calls BLAS on small matrices from every worker; OpenBLAS's own threads would
/// oversubscribe the cores (measured: the fit takes twice as long). `openblas_set_num_threads` takes
/// effect at once, unlike `OPENBLAS_NUM_THREADS`, which OpenBLAS reads only when it loads (so setting
/// the variable needed a re-execution of the whole binary, 0.35 s of libtorch loading). Call once at
/// start-up, before BLAS is used.
#[allow(unsafe_code)]
pub fn single_threaded_blas() {
    unsafe extern "C" {
        fn openblas_set_num_threads(threads: std::ffi::c_int);
    }
    // SAFETY: the function only stores OpenBLAS's thread count; it takes a plain integer.
    unsafe { openblas_set_num_threads(1) }
}
