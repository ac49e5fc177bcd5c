//! Process edges: argument parsing, exit statuses, diagnostics set-up.

use clap::Parser;
use hermes_reconciler::cli::{Cli, Command};
use hermes_reconciler::commands::{self, EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use hermes_reconciler::config::Config;

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let config = match Config::resolve(&cli.settings.raw_settings()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hermes-reconciler: configuration error: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    init_tracing(&config.log_filter);
    let applier = match commands::applier(&config) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hermes-reconciler: configuration error: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let code = match cli.command {
        Command::Once { dry_run, json } => commands::once::run(&config, &applier, dry_run, json),
        Command::Run { .. } | Command::Status { .. } => {
            eprintln!("hermes-reconciler: not implemented yet");
            EXIT_FAILURE
        }
    };
    std::process::exit(code);
}
