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

/// Sets up logging and returns the hook that changes the filter at runtime (SIGHUP).
fn init_logging(level: &str) -> peercam::service::LogLevelSetter {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    // Library internals stay quiet unless asked for through RUST_LOG.
    let from_config = |level: &str| {
        EnvFilter::try_new(format!(
            "{level},rumqttd=warn,rtc=warn,rtc_ice=error,rtc_dtls=error,webrtc=warn"
        ))
    };
    let env_override = std::env::var_os("RUST_LOG").is_some();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| from_config(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let output = fmt::layer()
        .with_target(false)
        // Colour only for a person at a terminal; pipes and journald get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()) && !under_journald);
    // journald adds its own timestamps.
    let output = if under_journald {
        output.without_time().boxed()
    } else {
        output.boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .init();
    Box::new(move |level: &str| {
        if env_override {
            return Err("RUST_LOG is set and takes precedence".to_owned());
        }
        let filter = from_config(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
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
            let set_log_level = init_logging(&config.log.level);
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
            match runtime.block_on(peercam::service::run(
                config,
                cli.config.clone(),
                set_log_level,
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
