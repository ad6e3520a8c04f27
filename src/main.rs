//! The `agora` binary: CLI wiring only. Each subcommand parses its flags and
//! calls into the crate that owns the role.

mod cli;

use std::process::ExitCode;

/// mimalloc, not glibc's malloc: the master's core frees what other
/// threads allocated (every message), which took glibc's arena locks
/// (thousands of waits a load), and glibc kept freed memory until trimmed
/// (see ARCHITECTURE.md, Memory).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Every TLS connection of this process uses ring.
    agora_proto::tls::install_default_provider();
    match cli::main_exec() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agora: {e:#}");
            ExitCode::FAILURE
        }
    }
}
