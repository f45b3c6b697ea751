//! The `peercam` command line: run the agent, or check a configuration file.
//! It must never start the agent on a configuration that failed validation.

use clap::{Parser, Subcommand};
use peercam::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "peercam",
    version,
    about = "Camera-to-browser WebRTC streaming agent"
)]
struct Cli {
    /// Configuration file (TOML). Without it, built-in defaults are used.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Validate the configuration file and exit: 0 when valid.
    CheckConfig,
}

fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    match path {
        Some(path) => Config::load(path).map_err(|e| e.to_string()),
        None => Ok(Config::default()),
    }
}

fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        // Library internals stay quiet unless asked for through RUST_LOG.
        .unwrap_or_else(|_| {
            EnvFilter::new(format!(
                "{level},rumqttd=warn,rtc=warn,rtc_ice=error,rtc_dtls=error,webrtc=warn"
            ))
        });
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Colour only for a person at a terminal; pipes and journald get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()) && !under_journald);
    if under_journald {
        // journald adds its own timestamps and does not render colours.
        builder.without_time().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(cli.config.as_ref()) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("peercam: invalid configuration: {message}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            let what = cli
                .config
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "built-in defaults".into());
            println!("{what}: configuration is valid");
            ExitCode::SUCCESS
        }
        Command::Run => {
            init_logging(&config.log.level);
            tracing::info!(version = peercam::service::VERSION, device = %config.device.id, "peercam starting");
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    eprintln!("peercam: cannot start the async runtime: {err}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(peercam::service::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
