//! The run's progress on stderr (an indicatif bar, hidden when not asked for), and the
//! [`Progress`] sink platforms write their long steps' progress to, shown on the same bar.

use indicatif::{ProgressBar, ProgressStyle};

use crate::platform::Progress;

pub(super) fn progress_bar(enabled: bool, len: usize) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Platforms' progress, as the bar's message.
pub(super) struct BarProgress(pub ProgressBar);

impl Progress for BarProgress {
    fn message(&self, text: String) {
        self.0.set_message(text);
    }
}
