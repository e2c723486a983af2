//! Progress lines for long runs (`ekattest-fleet run`, `load`): on a terminal one line
//! redrawn in place (`\r`, erase line); anywhere else (a log file, CI, a pipe) a plain line
//! every [`PLAIN_EVERY`], and the final line, so a redirected run is never silent for long
//! and its log holds no carriage returns.

use std::io::Write;
use std::time::{Duration, Instant};

/// How often a plain progress line is printed when stderr is not a terminal.
pub const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// A progress printer on stderr.
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    every: Duration,
    last: Option<Instant>,
}

impl Progress {
    /// For stderr as it is (terminal or not).
    #[must_use]
    pub fn stderr() -> Self {
        Self::new(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            PLAIN_EVERY,
        )
    }

    /// For a terminal (`tty`) or not, with plain lines every `every`.
    #[must_use]
    pub fn new(tty: bool, every: Duration) -> Self {
        Self {
            tty,
            every,
            last: None,
        }
    }

    /// Whether lines are redrawn in place.
    #[must_use]
    pub fn is_tty(&self) -> bool {
        self.tty
    }

    /// What [`Progress::update`] writes for `line` now, if anything: on a terminal always
    /// (in place, with a newline when `last`), otherwise the first line, then one per
    /// interval, and the `last` one.
    pub fn render(&mut self, line: &str, last: bool) -> Option<String> {
        if self.tty {
            let end = if last { "\n" } else { "" };
            return Some(format!("\r\x1b[2K{line}{end}"));
        }
        let due = self.last.is_none_or(|t| t.elapsed() >= self.every);
        if !(due || last) {
            return None;
        }
        self.last = Some(Instant::now());
        Some(format!("{line}\n"))
    }

    /// Writes `line` to stderr as [`Progress::render`] decides.
    pub fn update(&mut self, line: &str, last: bool) {
        if let Some(text) = self.render(line, last) {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(text.as_bytes());
            let _ = err.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_are_whole_lines_at_most_once_per_interval_and_the_last_always() {
        let mut p = Progress::new(false, Duration::from_secs(3600));
        assert_eq!(p.render("1/3", false).as_deref(), Some("1/3\n"));
        assert_eq!(p.render("2/3", false), None);
        assert_eq!(p.render("3/3", true).as_deref(), Some("3/3\n"));
        let mut p = Progress::new(false, Duration::ZERO);
        for i in 0..3 {
            let line = p.render(&format!("{i}"), false).unwrap();
            assert!(!line.contains('\r') && line.ends_with('\n'));
        }
    }

    #[test]
    fn a_terminal_redraws_in_place() {
        let mut p = Progress::new(true, PLAIN_EVERY);
        assert_eq!(p.render("1/3", false).as_deref(), Some("\r\x1b[2K1/3"));
        assert_eq!(p.render("1/3", false).as_deref(), Some("\r\x1b[2K1/3"));
        assert_eq!(p.render("3/3", true).as_deref(), Some("\r\x1b[2K3/3\n"));
    }
}
