//! Progress bars: the binary's implementation of the libraries' `Progress` trait.

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Mutex;

pub struct Bars {
    quiet: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    pub fn new(quiet: bool) -> Bars {
        Bars { quiet, bar: Mutex::new(None) }
    }
}

impl padim_core::Progress for Bars {
    fn start(&self, what: &str, total: u64) {
        if self.quiet {
            return;
        }
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template("{msg:>8} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(what.to_string());
        if let Ok(mut slot) = self.bar.lock() {
            *slot = Some(bar);
        }
    }

    fn advance(&self, n: u64) {
        if let Ok(slot) = self.bar.lock()
            && let Some(bar) = slot.as_ref()
        {
            bar.inc(n);
        }
    }

    fn note(&self, message: &str) {
        if let Ok(slot) = self.bar.lock() {
            match slot.as_ref() {
                Some(bar) => bar.println(message),
                None if !self.quiet => tracing::warn!("{message}"),
                None => {}
            }
        }
    }

    fn finish(&self) {
        if let Ok(mut slot) = self.bar.lock()
            && let Some(bar) = slot.take()
        {
            bar.finish();
        }
    }
}
