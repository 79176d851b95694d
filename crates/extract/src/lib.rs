//! The `extract` stage of padim, and the only crate that links libtorch.
//!
//! - [`preprocess`]: decoding and torchvision-equivalent resizing, cropping and normalisation.
//! - [`weights`]: strict loading of safetensors exports of PyTorch `state_dict`s.
//! - [`backbone`]: ResNet-18, Wide-ResNet-50-2 and EfficientNet-Lite0 trunks with PaDiM's taps.
//! - [`stage`]: the stage itself: images of a dataset shard to a Parquet embeddings table.
//!
//! PaDiM: Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and
//! Localization", ICPR 2020 workshops, arXiv:2011.08785.

pub mod backbone;
/// Pre-processing lives in `padim-image` (it needs no libtorch); re-exported under its old path.
pub mod preprocess {
    pub use padim_image::*;
}
pub mod stage;
pub mod weights;

pub use backbone::Backbone;
pub use preprocess::{ImageError, Preprocessor};
pub use stage::{ExtractError, ExtractOptions, ExtractSummary, run_extract};
pub use weights::WeightsError;

/// A device choice this machine cannot meet.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("CUDA was asked for (--device cuda) but libtorch finds no CUDA device")]
    NoCuda,
}

/// Resolves a device choice against what this machine has.
pub fn select_device(choice: padim_core::config::DeviceChoice) -> Result<tch::Device, DeviceError> {
    use padim_core::config::DeviceChoice;
    match choice {
        DeviceChoice::Cpu => Ok(tch::Device::Cpu),
        DeviceChoice::Auto => Ok(tch::Device::cuda_if_available()),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(tch::Device::Cuda(0)),
        DeviceChoice::Cuda => Err(DeviceError::NoCuda),
    }
}

/// Sets libtorch's intra-op threads; 0 keeps libtorch's default (all cores).
pub fn set_threads(threads: usize) {
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
}

/// How the network's threads are spent: `(workers, libtorch threads per worker)`.
///
/// On the CPU, two workers each run a batch of their own on half the threads (`threads = 0`: all
/// cores): measured with EfficientNet-Lite0 on 2 cores, two single-threaded workers run the network
/// alone 8% faster than one batch on two threads, and leave no thread spinning at libtorch's
/// barriers while decoding and writing take their turns on the cores. One thread: one worker. On
/// CUDA one worker drives the device.
pub fn network_workers(device: tch::Device, threads: usize) -> (usize, usize) {
    let threads = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
    if device != tch::Device::Cpu || threads < 2 {
        return (1, threads);
    }
    (2, threads / 2)
}

/// Returns the memory glibc keeps mapped for the next batch (see [`tune_allocator`]) to the OS,
/// once the network is done: the stages that follow in the same process (`padim run`) should not
/// carry extract's activation buffers.
#[allow(unsafe_code)]
pub fn release_memory() {
    // SAFETY: malloc_trim only returns free memory of glibc's heap to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Keeps freed large blocks mapped instead of returning them to the OS after every batch.
///
/// glibc's default (a dynamic mmap threshold, trim at 128 KiB) unmaps the activation buffers of
/// each batch, so the next batch pays for fresh page faults: measured in PyTorch, EfficientNet-Lite0
/// falls from ~110 to ~23 images/s. A long-running inference process wants them kept. Call once at
/// start-up, before other threads exist. Has no effect with another allocator. One arena: a
/// thread other than the main one would otherwise get a glibc arena whose heaps (64 MiB) cannot
/// hold a batch's activations, and would mmap and page-fault them anew on every batch.
#[allow(unsafe_code)]
pub fn tune_allocator() {
    // SAFETY: mallopt only sets allocator thresholds; it is called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
