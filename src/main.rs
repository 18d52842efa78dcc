//! The `dcfs` binary: parse arguments, run one command, print any error once.

#![warn(clippy::undocumented_unsafe_blocks)]

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`dcfs inspect | head`) like other Unix tools, instead
    // of panicking inside println!.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    cli::main()
}
