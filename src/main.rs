//! The `agora` binary: CLI wiring only. Each subcommand parses its flags and
//! calls into the crate that owns the role.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::main_exec() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agora: {e:#}");
            ExitCode::FAILURE
        }
    }
}
