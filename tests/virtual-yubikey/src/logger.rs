//! A minimal `log` backend writing one line per record to stderr or a file.
//!
//! Owns log formatting only. Redaction of secrets is the callers' job (see `card::trace`).

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

/// The logger.
pub struct Logger {
    /// Where lines go.
    out: Mutex<Box<dyn Write + Send>>,
    /// Start time, for relative timestamps.
    start: Instant,
    /// Maximum level.
    level: log::LevelFilter,
}

impl Logger {
    /// Installs the logger globally.
    ///
    /// # Errors
    /// If a logger was already installed.
    pub fn install(
        out: Box<dyn Write + Send>,
        level: log::LevelFilter,
    ) -> Result<(), log::SetLoggerError> {
        let logger = Logger {
            out: Mutex::new(out),
            start: Instant::now(),
            level,
        };
        log::set_boxed_logger(Box::new(logger))?;
        log::set_max_level(level);
        Ok(())
    }
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        if let Ok(mut out) = self.out.lock() {
            let t = self.start.elapsed().as_secs_f64();
            let _ = writeln!(
                out,
                "[{t:9.3} {:5} virtual-yubikey] {}",
                r.level(),
                r.args()
            );
            let _ = out.flush();
        }
    }

    fn flush(&self) {
        if let Ok(mut out) = self.out.lock() {
            let _ = out.flush();
        }
    }
}
