//! The `agora` binary: CLI wiring only. Each subcommand parses its flags and
//! calls into the crate that owns the role.

mod cli;

use std::process::ExitCode;

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
