//! The `shoal` binary: see `shoal --help`.

use clap::Parser;

fn main() {
    let cli = shoal::cli::Cli::parse();
    if let Err(error) = shoal::cli::run(cli) {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}
