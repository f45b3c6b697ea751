//! The `peercam` command line: run the agent, check a configuration file, list cameras,
//! probe one, and make the secrets admins paste (broker password hashes, a self-signed
//! certificate). It must never start the agent on a configuration that failed validation,
//! nor print a password.

use clap::{Parser, Subcommand};
use peercam::config::Config;
use peercam::probe::ProbeSource;
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
    /// List every V4L2 capture device: card, driver, bus, formats, sizes, rates, controls.
    Devices,
    /// Print an access link for a viewer (its key derived from the camera's secret,
    /// auth.secret_file, which is created when missing).
    Access {
        /// The viewer's name: 1 to 64 of A-Z a-z 0-9 _ . -
        #[arg(long)]
        viewer: String,
        /// How long the link works: 30d, 12h, 90m, 3600s.
        #[arg(long, default_value = "30d")]
        expires_in: String,
        /// The viewer page's address. Default: http(s)://127.0.0.1:PORT/ from http.listen and [tls].
        #[arg(long)]
        url: Option<String>,
        /// Print the WHEP bearer token (Authorization: Bearer ...) instead of the link.
        #[arg(long)]
        whep: bool,
        /// Print {"device","viewer","exp","key","url","whep_token"} for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Read a password (no echo on a terminal; else one line of stdin) and print the
    /// `[broker.users]` line with its argon2id hash.
    Passwd {
        /// The broker user: 1 to 64 of A-Z a-z 0-9 _ . -
        user: String,
    },
    /// Write a self-signed certificate and its key (PEM) for the `[tls]` listeners.
    Cert {
        /// A DNS name or IP address viewers use to reach this camera (repeat for several).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Where to write the certificate. Default: tls.cert_file, else ./peercam-cert.pem.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Where to write the key (mode 0600). Default: tls.key_file, else ./peercam-key.pem.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Capture and encode N frames; print the mode, achieved fps and per-frame costs.
    /// Unset options come from the configuration.
    Probe {
        /// A V4L2 device such as /dev/video0, or "testsrc". Default: video.source.
        #[arg(long)]
        device: Option<String>,
        /// Pixel format fourcc (H264, YUYV, UYVY, NV12, YU12, YV12, MJPG) or "auto". Default: video.format.
        #[arg(long)]
        format: Option<String>,
        #[arg(long)]
        width: Option<u32>,
        #[arg(long)]
        height: Option<u32>,
        #[arg(long)]
        fps: Option<u32>,
        /// Frames to capture and encode.
        #[arg(long, default_value_t = 100)]
        frames: u64,
    },
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
    // Library internals stay quiet unless asked for through RUST_LOG. rtc_sctp's endpoint
    // warns "refusing first packet" on every browser session: as DTLS client the camera's
    // SCTP endpoint refuses the browser's simultaneous INIT, and its own INIT sets up the
    // association, so that warning is no news.
    let from_config = |level: &str| {
        EnvFilter::try_new(format!(
            "{level},rumqttd=warn,rtc=warn,rtc_ice=error,rtc_dtls=error,rtc_sctp::endpoint=error,webrtc=warn"
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
            if let Some((cert, key)) = config.tls.files() {
                if let Err(err) = peercam::tls::ServerTls::load(cert, key) {
                    eprintln!("peercam: invalid configuration: {what}: {err}");
                    return ExitCode::from(2);
                }
            }
            for warning in config.warnings() {
                eprintln!("peercam check-config: warning: {warning}");
            }
            println!("{what}: configuration is valid");
            ExitCode::SUCCESS
        }
        Command::Passwd { user } => passwd(&user),
        Command::Cert {
            hosts,
            cert,
            key,
            force,
        } => {
            let cert = cert
                .or(config.tls.cert_file.clone())
                .unwrap_or_else(|| "peercam-cert.pem".into());
            let key = key
                .or(config.tls.key_file.clone())
                .unwrap_or_else(|| "peercam-key.pem".into());
            write_certificate(&hosts, &cert, &key, force)
        }
        Command::Devices => devices(),
        Command::Access {
            viewer,
            expires_in,
            url,
            whep,
            json,
        } => access(&config, &viewer, &expires_in, url, whep, json),
        Command::Probe {
            device,
            format,
            width,
            height,
            fps,
            frames,
        } => {
            let mut config = config;
            let video = &mut config.video;
            video.source = device.unwrap_or(video.source.clone());
            video.format = format.unwrap_or(video.format.clone());
            video.width = width.unwrap_or(video.width);
            video.height = height.unwrap_or(video.height);
            video.fps = fps.unwrap_or(video.fps);
            if let Err(err) = config.validate() {
                eprintln!("peercam probe: {err}");
                return ExitCode::from(2);
            }
            let _log_level = init_logging(&config.log.level);
            probe(&config, frames)
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
            let agent = async {
                let control = peercam::service::os_signals()?;
                peercam::service::run(config, cli.config.clone(), set_log_level, control).await
            };
            match runtime.block_on(agent) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn access(
    config: &Config,
    viewer: &str,
    expires_in: &str,
    url: Option<String>,
    whep: bool,
    json: bool,
) -> ExitCode {
    use peercam::auth::{is_valid_viewer_name, parse_lifetime, AccessGrant, CameraSecret};
    if !is_valid_viewer_name(viewer) {
        eprintln!("peercam access: --viewer {viewer:?} must be 1 to 64 of A-Z a-z 0-9 _ . -");
        return ExitCode::from(2);
    }
    let lifetime = match parse_lifetime(expires_in) {
        Ok(seconds) => seconds,
        Err(err) => {
            eprintln!("peercam access: --expires-in {err}");
            return ExitCode::from(2);
        }
    };
    let secret = match CameraSecret::load_or_create(&config.auth.secret_file) {
        Ok(secret) => secret,
        Err(err) => {
            eprintln!("peercam access: {err}");
            return ExitCode::FAILURE;
        }
    };
    let scheme = if config.tls.files().is_some() {
        "https"
    } else {
        "http"
    };
    let page = url.unwrap_or_else(|| match config.http.listen {
        Some(listen) if listen.ip().is_unspecified() => {
            format!("{scheme}://127.0.0.1:{}/", listen.port())
        }
        Some(listen) => format!("{scheme}://{listen}/"),
        None => format!("{scheme}://127.0.0.1:8080/"),
    });
    let exp = peercam::clock::unix_s() + lifetime;
    let grant = AccessGrant::new(&secret, &config.device.id, viewer, exp, &page);
    if json {
        println!("{}", serde_json::to_string(&grant).unwrap_or_default());
    } else if whep {
        println!("{}", grant.whep_token);
    } else {
        println!("{}", grant.url);
    }
    if config.auth.mode == peercam::signaling::protocol::AuthMode::Open {
        eprintln!(
            "peercam access: note: auth.mode is \"open\", so the camera does not ask for keys"
        );
    }
    ExitCode::SUCCESS
}

fn passwd(user: &str) -> ExitCode {
    use peercam::signaling::broker_users::{hash_line, is_valid_user_name};
    use std::io::IsTerminal;
    if !is_valid_user_name(user) {
        eprintln!("peercam passwd: {user:?} must be 1 to 64 of A-Z a-z 0-9 _ . - (and not the internal user's name)");
        return ExitCode::from(2);
    }
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("Password for {user}: "));
        let again = rpassword::prompt_password("Again: ");
        match (first, again) {
            (Ok(first), Ok(again)) if first == again => Ok(first),
            (Ok(_), Ok(_)) => Err("the two passwords differ".to_owned()),
            (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
        }
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map(|_| line.trim_end_matches(['\r', '\n']).to_owned())
            .map_err(|e| e.to_string())
    };
    let password = match password {
        Ok(password) if !password.is_empty() => password,
        Ok(_) => {
            eprintln!("peercam passwd: the password is empty");
            return ExitCode::from(2);
        }
        Err(err) => {
            eprintln!("peercam passwd: cannot read the password: {err}");
            return ExitCode::FAILURE;
        }
    };
    match hash_line(user, &password) {
        Ok(line) => {
            eprintln!("# paste under [broker.users]:");
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("peercam passwd: {err}");
            ExitCode::FAILURE
        }
    }
}

fn write_certificate(
    hosts: &[String],
    cert: &std::path::Path,
    key: &std::path::Path,
    force: bool,
) -> ExitCode {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let pair = match peercam::tls::self_signed(hosts) {
        Ok(pair) => pair,
        Err(err) => {
            eprintln!("peercam cert: {err}");
            return ExitCode::from(2);
        }
    };
    let write = |path: &std::path::Path, text: &str, mode: u32| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).mode(mode);
        if force {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        options
            .open(path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    let written =
        write(key, &pair.key_pem, 0o600).and_then(|()| write(cert, &pair.cert_pem, 0o644));
    if let Err(err) = written {
        eprintln!("peercam cert: {err} (--force replaces existing files)");
        return ExitCode::FAILURE;
    }
    println!("wrote {} and {}", cert.display(), key.display());
    println!("SHA-256 fingerprint: {}", pair.fingerprint);
    println!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}",
        cert.display().to_string(),
        key.display().to_string()
    );
    ExitCode::SUCCESS
}

fn devices() -> ExitCode {
    let paths = peercam::source::v4l2::capture_devices();
    let mut found = 0;
    for path in &paths {
        match peercam::source::v4l2::describe_device(path) {
            Ok(Some(report)) => {
                found += 1;
                println!("{report}");
            }
            Ok(None) => {}
            Err(err) => eprintln!("peercam devices: {err}"),
        }
    }
    if found == 0 {
        println!(
            "no V4L2 capture devices found (looked at {} /dev/video* nodes)",
            paths.len()
        );
    }
    ExitCode::SUCCESS
}

fn probe(config: &Config, frames: u64) -> ExitCode {
    let video = &config.video;
    let source = if video.source == "testsrc" {
        ProbeSource::TestSrc {
            width: video.width,
            height: video.height,
            fps: video.fps,
        }
    } else {
        ProbeSource::V4l2(peercam::service::v4l2_options(config, &video.source))
    };
    let settings = peercam::service::encoder_settings(config);
    match peercam::probe::probe(source, frames.max(1), settings) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("peercam probe: {err}");
            ExitCode::FAILURE
        }
    }
}
