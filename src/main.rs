//! The `shoal` binary: see `shoal --help`.

use clap::Parser;

/// jemalloc instead of glibc's malloc: a node allocates per request (frames, version sets,
/// replies) from several threads, and glibc's allocator took about 15 % of a loaded node's
/// CPU (perf, workload A at 32 connections). Measured on one node: about 17 % less CPU per
/// operation and 15 % more throughput (issue 12's closing note).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start (`_RJEM_MALLOC_CONF` in the environment overrides
/// them). One arena: a node has a handful of threads, and jemalloc's default of four per core
/// kept about 60 MiB more resident at 1M keys (290 MiB against 229 MiB, `benches/memory.sh`)
/// for no measurable speed. Dirty pages are purged after a second (when the allocator next
/// runs: no background thread). The effect shows in `benches/memory.sh`; a misspelt symbol
/// would be ignored silently, so check there after touching it.
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_CONF: &[u8; 47] = b"narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() {
    quiet_on_closed_stdout();
    let cli = shoal::cli::Cli::parse();
    if let Err(error) = shoal::cli::run(cli) {
        // The commands that write through `writeln!` (admin throttle, aae, plan) get the
        // closed pipe as an error, not a panic: the same quiet stop as below.
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        {
            std::process::exit(141);
        }
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

/// `shoal admin ring | head`: once the reader is gone, the next print fails with a broken
/// pipe, and Rust (which ignores SIGPIPE) panics with a backtrace. Like other Unix tools, the
/// command then just stops (status 141, a SIGPIPE death's); every other panic is reported
/// as before. The panic's text is all there is to tell it by: `println!` panics with a
/// formatted string, and changing every print of every command to handle the error instead
/// would spread this one rule over them all.
fn quiet_on_closed_stdout() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        report(info);
    }));
}
