//! The `kiungo` binary: parses the command line and runs the command.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = kiungo::cli::Cli::parse();
    kiungo::cli::run(cli)
}
