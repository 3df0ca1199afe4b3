//! `moat`: run an SMTP edge hygiene node, check its configuration, and tools around it.

use std::io::{BufRead, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod admin;
mod av;
mod config;
mod filter;
mod node;
mod policy;

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
    /// Scan messages (files, or folders of them) with the rule packs: verdict, score, and the
    /// rules that hit with the text they matched. Same code path as the node.
    Scan {
        /// The node's configuration file: its `[filter]` rules folder, MIME and scan size
        /// limits and over-limit verdict apply (embedded defaults without it).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Folder of rule packs (default: the configuration's, else `rules`).
        #[arg(long)]
        rules: Option<PathBuf>,
        /// One JSON object per message.
        #[arg(long)]
        json: bool,
        /// Message files or folders.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Rule pack tools.
    Rules {
        #[command(subcommand)]
        action: RulesAction,
    },
    /// Quarantined messages: held in the queue until released or deleted.
    Quarantine {
        /// The node's configuration file (for the admin address and token file).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the node's JSON answer as it is.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: QuarantineAction,
    },
    /// Inspect and act on a running node's queue (through its admin listener).
    Queue {
        /// The node's configuration file (for the admin address and token file).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the node's JSON answer as it is.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: QueueAction,
    },
}

#[derive(Subcommand)]
enum RulesAction {
    /// Compile the packs in a folder and run their own tests.
    Check {
        /// Folder of rule packs.
        dir: PathBuf,
    },
    /// Convert SpamAssassin rules (header, body, rawbody, uri, full, meta, with scores) into
    /// a pack; lists each rule it could not convert and why.
    ImportSpamassassin {
        /// Where to write the pack (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Pack name.
        #[arg(long, default_value = "spamassassin")]
        name: String,
        /// SpamAssassin .cf files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum QuarantineAction {
    /// Every held message (quarantined by a stage, or held by an operator).
    List,
    /// One held message with its recipients.
    Show {
        /// Queue id.
        id: String,
    },
    /// Deliver it after all.
    Release {
        /// Queue id.
        id: String,
    },
    /// Remove it without delivering it.
    Delete {
        /// Queue id.
        id: String,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// Every queued message.
    List,
    /// One message with its recipients.
    Show {
        /// Queue id.
        id: String,
    },
    /// Try a deferred message now.
    Retry {
        /// Queue id.
        id: String,
    },
    /// Stop delivering a message until it is released.
    Hold {
        /// Queue id.
        id: String,
    },
    /// Deliver a held message again.
    Release {
        /// Queue id.
        id: String,
    },
    /// Remove a message without delivering it (no bounce).
    Delete {
        /// Queue id.
        id: String,
    },
    /// Counts by state, oldest age, bytes on disk.
    Stats,
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
        Command::Queue {
            config,
            json,
            action,
        } => queue_command(config.as_ref(), json, action, false),
        Command::Quarantine {
            config,
            json,
            action,
        } => {
            let action = match action {
                QuarantineAction::List => QueueAction::List,
                QuarantineAction::Show { id } => QueueAction::Show { id },
                QuarantineAction::Release { id } => QueueAction::Release { id },
                QuarantineAction::Delete { id } => QueueAction::Delete { id },
            };
            queue_command(config.as_ref(), json, action, true)
        }
        Command::Scan {
            config,
            rules,
            json,
            paths,
        } => {
            let filter = match &config {
                Some(path) => match load(Some(path)) {
                    Ok(rt) => rt.filter,
                    Err(code) => return code,
                },
                None => None,
            };
            let (rules, config) = match filter {
                Some(f) => (rules.unwrap_or(f.rules_dir), f.config),
                None => {
                    let rules = rules.unwrap_or_else(|| PathBuf::from("rules"));
                    if let Some(path) = &config {
                        // The node would not scan at all: say what this scan runs on.
                        eprintln!(
                            "moat: the content filter is off in {} ([filter] enabled = false, \
                             or no rules folder); scanning with the embedded filter defaults \
                             and {}",
                            path.display(),
                            rules.display()
                        );
                    }
                    (rules, moat_filter::FilterConfig::default())
                }
            };
            let options = moat_rules::CompileOptions::default();
            match moat_filter::cli::scan_paths(&rules, &paths, &options, &config) {
                Ok(reports) => {
                    // Stdout is line-buffered: one write per report line otherwise.
                    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                    if let Err(e) = moat_filter::cli::write_reports(&reports, json, &mut out)
                        .and_then(|()| out.flush())
                    {
                        // A reader that stopped reading (`| head`) is not an error.
                        if e.kind() == std::io::ErrorKind::BrokenPipe {
                            return ExitCode::SUCCESS;
                        }
                        eprintln!("moat: {e}");
                        return ExitCode::FAILURE;
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("moat: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Rules {
            action: RulesAction::Check { dir },
        } => match moat_filter::cli::check_dir(&dir, &moat_rules::CompileOptions::default()) {
            Ok(report) => {
                for (name, version, rules) in &report.packs {
                    println!("{name} {version}: {rules} rules");
                }
                println!(
                    "{}: ok ({} pack tests passed, compiled in {} ms)",
                    dir.display(),
                    report.tests,
                    report.compile_ms
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", dir.display());
                ExitCode::from(2)
            }
        },
        Command::Rules {
            action:
                RulesAction::ImportSpamassassin {
                    output,
                    name,
                    files,
                },
        } => {
            let options = moat_rules::import::ImportOptions {
                name,
                ..Default::default()
            };
            match moat_rules::import::spamassassin(&files, &options) {
                Ok(report) => {
                    let written = match &output {
                        Some(path) => std::fs::write(path, &report.pack),
                        None => {
                            use std::io::Write;
                            std::io::stdout().lock().write_all(report.pack.as_bytes())
                        }
                    };
                    if let Err(e) = written {
                        eprintln!("moat: {e}");
                        return ExitCode::FAILURE;
                    }
                    let _ = report.write_skipped(&mut std::io::stderr().lock());
                    eprintln!(
                        "{} rules converted, {} not converted (listed above)",
                        report.converted,
                        report.skipped.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("moat: {e}");
                    ExitCode::from(2)
                }
            }
        }
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

/// `held_only`: the `quarantine` view of the queue (lists held messages only).
fn queue_command(
    config: Option<&PathBuf>,
    json: bool,
    action: QueueAction,
    held_only: bool,
) -> ExitCode {
    let rt = match load(config) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let token = match std::fs::read_to_string(&rt.admin_token_file) {
        Ok(t) => t.trim().to_string(),
        Err(e) => {
            eprintln!(
                "moat: cannot read the admin token {}: {e} (is the node running with this configuration?)",
                rt.admin_token_file.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let base = format!("http://{}", rt.admin_listen);
    let (method, path) = match &action {
        QueueAction::List => ("GET", "/admin/queue".to_string()),
        QueueAction::Stats => ("GET", "/admin/queue/stats".to_string()),
        QueueAction::Show { id } => ("GET", format!("/admin/queue/{id}")),
        QueueAction::Retry { id } => ("POST", format!("/admin/queue/{id}/retry")),
        QueueAction::Hold { id } => ("POST", format!("/admin/queue/{id}/hold")),
        QueueAction::Release { id } => ("POST", format!("/admin/queue/{id}/release")),
        QueueAction::Delete { id } => ("DELETE", format!("/admin/queue/{id}")),
    };
    let value = match admin::call(&base, &token, method, &path) {
        Ok(serde_json::Value::Array(list)) if held_only => serde_json::Value::Array(
            list.into_iter()
                .filter(|m| m.get("state").and_then(|s| s.as_str()) == Some("held"))
                .collect(),
        ),
        Ok(v) => v,
        Err(e) => {
            eprintln!("moat: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    match action {
        QueueAction::List => {
            let list: Vec<admin::SummaryJson> = serde_json::from_value(value).unwrap_or_default();
            println!(
                "{:<18} {:<9} {:>9} {:>7}  FROM",
                "ID", "STATE", "SIZE", "RCPTS"
            );
            for m in &list {
                println!(
                    "{:<18} {:<9} {:>9} {:>3}/{:<3}  <{}>",
                    m.id, m.state, m.size, m.pending, m.total, m.from
                );
            }
            println!("{} message(s)", list.len());
        }
        QueueAction::Show { .. } => match serde_json::from_value::<admin::DetailJson>(value) {
            Ok(d) => {
                println!("id:       {}", d.summary.id);
                println!("state:    {}", d.summary.state);
                println!("from:     <{}>", d.summary.from);
                println!("size:     {}", d.summary.size);
                println!("origin:   {}", d.origin);
                for r in d.recipients {
                    println!(
                        "rcpt:     <{}> {} attempts={} {}",
                        r.address,
                        r.status,
                        r.attempts,
                        r.reply.unwrap_or_default()
                    );
                }
            }
            Err(e) => eprintln!("moat: unexpected answer: {e}"),
        },
        QueueAction::Stats => match serde_json::from_value::<admin::StatsJson>(value) {
            Ok(s) => {
                println!("messages:           {}", s.messages);
                println!("pending:            {}", s.pending);
                println!("deferred:           {}", s.deferred);
                println!("active:             {}", s.active);
                println!("held:               {}", s.held);
                println!("recipients pending: {}", s.recipients_pending);
                println!(
                    "oldest age:         {}",
                    s.oldest_age_seconds.map_or("-".into(), |a| format!("{a}s"))
                );
                println!("spool bytes:        {}", s.spool_bytes);
            }
            Err(e) => eprintln!("moat: unexpected answer: {e}"),
        },
        _ => println!(
            "{}",
            value.get("done").and_then(|v| v.as_str()).unwrap_or("ok")
        ),
    }
    ExitCode::SUCCESS
}
