//! `coffer`: end-to-end encrypted backups of an app's SQLite database and
//! media, restorable on a new device with a 64-digit recovery key.

#[macro_use]
mod output;
mod cli;
mod password;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match cli::Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => cli::EXIT_USAGE,
            });
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("COFFER_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if args.verbose { "info" } else { "warn" })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .init();
    let json = args.json;
    match cli::run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let report = cli::error_report(&e);
            errln!("error: {e:#}");
            if json {
                output::error(&e, &report);
            }
            ExitCode::from(report.code)
        }
    }
}
