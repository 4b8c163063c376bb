//! The `kiungo` binary: parses the command line and runs the command.

use clap::Parser;

/// Mapping allocates many small, short-lived values per event; mimalloc
/// handles that pattern markedly faster than the system allocator
/// (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = kiungo::cli::Cli::parse();
    kiungo::cli::run(cli)
}
