//! The `mpn-notify` binary: `serve`, `demo`, `hash-secret`, `check-config`.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mpn_engine::{Config, telemetry};
use mpn_notify::demo::{self, DemoOptions};

/// mimalloc instead of the system allocator: the per-notification path allocates
/// (notifications, tokens, queue items) on several threads, where glibc's malloc
/// showed as the largest cost in the pipeline profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Real-time Pay-easy payment notification engine.
#[derive(Debug, Parser)]
#[command(name = "mpn-notify", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine against a Kafka cluster.
    Serve {
        /// TOML configuration file (see docs/mpn-notify.example.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run everything in one process: broker, engine, traffic and a subscriber.
    Demo {
        /// Seconds to publish for; without it, runs until Ctrl-C.
        #[arg(long)]
        duration: Option<u64>,
        /// Number of institutions.
        #[arg(long, default_value_t = 36)]
        institutions: usize,
        /// Events per second.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Seed of the traffic generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print only the summary, not every notification.
        #[arg(long)]
        quiet: bool,
        /// Address of the staff console (`127.0.0.1:0` picks a free port).
        #[arg(long, default_value = "127.0.0.1:8090")]
        console: std::net::SocketAddr,
    },
    /// Read a secret from standard input and print its Argon2 hash for the config.
    HashSecret,
    /// Load and validate a configuration file, then print it as the engine sees it.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
}

async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return ctrl_c.await.unwrap_or_default(),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or_default();
}

/// Yields once per SIGHUP (the reload request).
#[cfg(unix)]
fn hangups()
-> anyhow::Result<impl FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
    use std::sync::Arc;
    use tokio::signal::unix::{SignalKind, signal};
    let hup = Arc::new(tokio::sync::Mutex::new(
        signal(SignalKind::hangup()).context("listening for SIGHUP")?,
    ));
    Ok(move || {
        let hup = hup.clone();
        Box::pin(async move {
            if hup.lock().await.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mpn-notify: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command));
    // A blocking task stuck on a hung file system (a reload) must not keep the
    // process from exiting after its drain.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mpn-notify: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { config } => {
            let config = Config::load(Some(&config))?;
            telemetry::init_logging(config.logging.format, &config.logging.level);
            mpn_notify::serve::run(config, signal(), hangups()?).await
        }
        Command::Demo {
            duration,
            institutions,
            rate,
            seed,
            quiet,
            console,
        } => {
            telemetry::init_logging(mpn_engine::config::LogFormat::Human, "error");
            if institutions == 0 || rate == 0 {
                anyhow::bail!("--institutions and --rate must be at least 1");
            }
            let opts = DemoOptions {
                duration: duration.map(Duration::from_secs),
                institutions,
                rate,
                seed,
                quiet,
                console,
            };
            let summary = demo::run(opts, signal()).await?;
            if !summary.dead_letter_fields.is_empty() {
                let by_field: Vec<String> = summary
                    .dead_letter_fields
                    .iter()
                    .map(|(f, n)| format!("{f}={n}"))
                    .collect();
                println!("demo: dead letters by field: {}", by_field.join(", "));
            }
            println!("{summary}");
            if summary.is_complete() {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "demo: incomplete: {} expected dead letters, {} read back; {} notifications lost",
                    summary.expected_dead_letters, summary.dead_lettered, summary.lost
                );
                Ok(ExitCode::FAILURE)
            }
        }
        Command::HashSecret => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the secret from stdin")?;
            let secret = line.trim_end_matches(['\r', '\n']);
            if secret.is_empty() {
                anyhow::bail!("the secret read from stdin is empty");
            }
            println!(
                "{}",
                mpn_engine::auth::hash_secret(secret).map_err(anyhow::Error::msg)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => {
            let config = Config::load(Some(&config))?;
            println!("{}", toml::to_string_pretty(&config.redacted())?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
