//! The readable event trace of a run, recorded only when asked for (`--trace`), so the thousands
//! of passing seeds pay nothing for it. A failing seed is re-run with the trace on: the run is a
//! pure function of the seed, so the second run is the same run.

use crate::network::Time;

#[derive(Debug, Default)]
pub struct Trace {
    enabled: bool,
    lines: Vec<String>,
}

impl Trace {
    pub fn new(enabled: bool) -> Trace {
        Trace {
            enabled,
            lines: Vec::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Records one event; `describe` runs only when tracing is on.
    pub fn event(&mut self, now: Time, describe: impl FnOnce() -> String) {
        if self.enabled {
            self.lines.push(format!("[{now:>7}] {}", describe()));
        }
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }
}
