//! `moat`: run an SMTP edge hygiene node, check its configuration, and tools around it.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod config;
mod node;
mod spool;

use config::{Config, ConfigError};

#[derive(Parser)]
#[command(name = "moat", version, about = "SMTP edge hygiene node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (on the embedded defaults when no --config is given).
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file: print every error with its key path and line.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
    /// Read a password from standard input and print its argon2id hash for a users file.
    HashPassword,
}

fn report(file: &str, errors: &[ConfigError]) {
    for e in errors {
        eprintln!("{file}: {e}");
    }
    eprintln!("{file}: {} error(s)", errors.len());
}

fn load(path: Option<&PathBuf>) -> Result<config::Runtime, ExitCode> {
    let (name, result) = match path {
        Some(p) => (p.display().to_string(), Config::load(p)),
        None => {
            let (config, source) = Config::embedded();
            ("<embedded defaults>".to_string(), config.build(&source))
        }
    };
    result.map_err(|e| {
        report(&name, &e);
        ExitCode::from(2)
    })
}

fn init_logging(level: &str) {
    let filter = EnvFilter::try_from_env("MOAT_LOG")
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            let rt = match load(config.as_ref()) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            init_logging(&rt.log_level);
            // Each session needs a descriptor; the default soft limit (often 1024) is too low
            // for an MX. Raise it to the hard limit.
            if let Ok(n) = rlimit::increase_nofile_limit(u64::MAX) {
                tracing::debug!(nofile = n, "file descriptor limit");
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("moat: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(node::run(rt)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("moat: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { file } => match load(Some(&file)) {
            Ok(rt) => {
                println!(
                    "{}: ok ({} connector(s), {} accepted domain(s))",
                    file.display(),
                    rt.connectors.len(),
                    rt.accepted_domains.len()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::HashPassword => {
            let mut line = String::new();
            if std::io::stdin().lock().read_line(&mut line).is_err() {
                eprintln!("moat: cannot read a password from standard input");
                return ExitCode::FAILURE;
            }
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                eprintln!("moat: empty password");
                return ExitCode::FAILURE;
            }
            match moat_smtp::auth::hash_password(password) {
                Ok(h) => {
                    println!("{h}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("moat: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
