//! The node's logger: slog, human-readable by default, JSON on request. slog-async moves
//! formatting to one drain thread (a plain thread, not an async runtime).

use slog::{o, Drain, Level, Logger};

/// A logger writing to stderr at `level` in `format` (`"text"` or `"json"`).
pub fn logger(level: &str, format: &str) -> Logger {
    let level = match level {
        "debug" => Level::Debug,
        "warning" => Level::Warning,
        "error" => Level::Error,
        _ => Level::Info,
    };
    let drain = if format == "json" {
        let json = slog_json::Json::default(std::io::stderr()).fuse();
        slog_async::Async::new(json).build().fuse()
    } else {
        let decorator = slog_term::TermDecorator::new().stderr().build();
        let term = slog_term::FullFormat::new(decorator).build().fuse();
        slog_async::Async::new(term).build().fuse()
    };
    Logger::root(drain.filter_level(level).fuse(), o!())
}

/// A logger that discards everything (tests and tools).
pub fn discard() -> Logger {
    Logger::root(slog::Discard, o!())
}
