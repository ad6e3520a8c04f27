//! `agora-init DIR`: the container init (see `agora_agent::init`), a binary
//! of its own so that starting a container execs something small — the
//! `agora` binary works too (`agora container-init DIR`), but costs about a
//! millisecond more per launch to load.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: agora-init CONTAINER-DIR (started by the agora agent)");
        return ExitCode::from(2);
    };
    let code = agora_agent::init::container_init_main(std::path::Path::new(&dir));
    ExitCode::from(u8::try_from(code).unwrap_or(255))
}
