//! The node's logger: slog, human-readable by default, JSON on request. slog-async moves
//! formatting to one drain thread (a plain thread, not an async runtime).

use slog::{o, Drain, Level, Logger};

/// A logger writing to stderr at `level` in `format` (`"text"` or `"json"`). Lines still
/// queued are written when the last clone of it is dropped.
pub fn logger(level: &str, format: &str) -> Logger {
    let drain = slog_async::Async::new(stderr_drain(format)).build().fuse();
    Logger::root(drain.filter_level(level_of(level)).fuse(), o!())
}

/// The same, and a guard that, dropped, writes every line still queued and waits until it is
/// written: a process holds it to its end. Without it the node's last lines ("node stopped",
/// the stages' stops) were lost when a clone of the logger held by another thread (the signal
/// watcher's) kept the queue alive past `main`, and the process exited first.
pub fn logger_with_guard(level: &str, format: &str) -> (Logger, slog_async::AsyncGuard) {
    let (drain, guard) = slog_async::Async::new(stderr_drain(format)).build_with_guard();
    let drain = drain.fuse().filter_level(level_of(level)).fuse();
    (Logger::root(drain, o!()), guard)
}

fn level_of(level: &str) -> Level {
    match level {
        "debug" => Level::Debug,
        "warning" => Level::Warning,
        "error" => Level::Error,
        _ => Level::Info,
    }
}

/// stderr, as JSON or as text.
fn stderr_drain(format: &str) -> Box<dyn Drain<Ok = (), Err = slog::Never> + Send> {
    if format == "json" {
        Box::new(slog_json::Json::default(std::io::stderr()).fuse())
    } else {
        let decorator = slog_term::TermDecorator::new().stderr().build();
        Box::new(slog_term::FullFormat::new(decorator).build().fuse())
    }
}

/// A logger that discards everything (tests and tools).
pub fn discard() -> Logger {
    Logger::root(slog::Discard, o!())
}
