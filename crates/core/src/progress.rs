//! Progress reporting as a trait: libraries report, the binary draws (indicatif), tests ignore.

/// Receives progress of one long loop. Implementations must be cheap: `advance` is called per item.
pub trait Progress: Send + Sync {
    /// A new loop starts, over `total` items, described by `what` (e.g. "extract").
    fn start(&self, what: &str, total: u64);
    /// `n` more items are done.
    fn advance(&self, n: u64);
    /// A message worth showing beside the bar (e.g. a skipped file).
    fn note(&self, message: &str);
    /// The loop has ended.
    fn finish(&self);
}

/// A [`Progress`] that reports nothing: for tests and library callers without a terminal.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _what: &str, _total: u64) {}
    fn advance(&self, _n: u64) {}
    fn note(&self, _message: &str) {}
    fn finish(&self) {}
}
