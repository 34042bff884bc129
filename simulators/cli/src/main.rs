//! The `mpn-sim` binary: `run` against a deployment, `demo-load` in-process.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mpn_sim_cli::settings::Settings;
use mpn_sim_cli::{demo, load};

/// Load simulator of mpn-notify: Pay-easy traffic in, billing subscribers out, and a
/// report of throughput, latency and correctness.
#[derive(Debug, Parser)]
#[command(name = "mpn-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish traffic to a deployment's Kafka and subscribe to its engine over gRPC.
    Run {
        /// TOML file with the same settings (keys = flag names with `_`); flags win.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Settings,
    },
    /// The same run against a broker and an engine started in this process.
    DemoLoad {
        /// TOML file with the same settings (keys = flag names with `_`); flags win.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Draw report.svg again from a report.json (written beside it).
    Redraw {
        /// The report.json of a run.
        report: PathBuf,
    },
    /// Print the institution codes the traffic uses (to grant them to the credentials
    /// given to `run --login`) with each one's share of the traffic.
    Institutions {
        /// Institutions in the traffic.
        #[arg(long, default_value_t = 36)]
        institutions: usize,
    },
}

fn print_institutions(n: usize) {
    let generator = mpn_sim::traffic::Generator::new(mpn_sim::traffic::TrafficConfig {
        institutions: n,
        ..Default::default()
    });
    for i in generator.institutions() {
        println!(
            "{}  {:>6.2}%  {}",
            i.code,
            100.0 * generator.share(i),
            i.fee_name
        );
    }
}

async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn main_async(cli: Cli) -> anyhow::Result<bool> {
    let (command, config, settings) = match cli.command {
        Command::Run { config, settings } => ("run", config, settings),
        Command::DemoLoad { config, settings } => ("demo-load", config, settings),
        Command::Institutions { institutions } => {
            print_institutions(institutions);
            return Ok(true);
        }
        Command::Redraw { report } => {
            let text = std::fs::read_to_string(&report)
                .with_context(|| format!("reading {}", report.display()))?;
            let parsed: mpn_sim_cli::report::Report = serde_json::from_str(&text)
                .with_context(|| format!("{} is not an mpn-sim report", report.display()))?;
            let svg = report.with_file_name("report.svg");
            parsed.write_svg(&svg)?;
            println!("{}", svg.display());
            return Ok(true);
        }
    };
    let settings = match config {
        Some(path) => settings.over(Settings::from_file(&path)?),
        None => settings,
    };
    let (report, written) = if command == "run" {
        let target = settings.target()?;
        let opts = settings.load_options(60)?;
        load::run(command, &target, &opts, ctrl_c()).await?
    } else {
        settings.check_demo()?;
        let opts = settings.load_options(10)?;
        demo::run(
            &opts,
            &settings.topic(),
            settings.partitions.unwrap_or(6),
            ctrl_c(),
        )
        .await?
    };
    println!("{report}");
    println!(
        "report        {} and {}",
        written.json.display(),
        written.svg.display()
    );
    Ok(report.checks.passed)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    mpn_engine::telemetry::init_logging(mpn_engine::config::LogFormat::Human, "error");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mpn-sim: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(main_async(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("mpn-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}
