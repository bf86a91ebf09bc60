//! The pushgate binary: argv, logging, config loading, run until a signal,
//! exit codes. Everything else lives in the library.
//!
//! Exit codes: 0 clean stop, 1 runtime failure (bind, TLS, publish
//! refused), 2 bad command line, 64 bad config.

use std::path::PathBuf;
use std::process::ExitCode;

use pushgate::{app, config, listener::tls};

const USAGE: &str = "\
pushgate — real-time push (WebSocket, SSE, long polling) in front of HTTP APIs

Usage:
  pushgate [--config FILE] [--log-format text|json]      run (FILE also from PUSHGATE_CONFIG)
  pushgate check --config FILE                           validate a config and exit
  pushgate publish [--url URL] [--token T] [--event E] [--json] CHANNEL DATA|-
                                                         publish one message (DATA `-` = stdin)
  pushgate publish [--url URL] [--token T] [--event E] --binary CHANNEL FILE|-
                                                         publish a file's bytes (`-` = stdin)
  pushgate --version | --help
";

const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_CONFIG: u8 = 64;

#[derive(Default)]
struct Args {
    command: Option<String>,
    config: Option<PathBuf>,
    json_logs: bool,
    url: Option<String>,
    token: Option<String>,
    event: Option<String>,
    json_data: bool,
    binary: bool,
    positional: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--help" | "-h" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--version" | "-V" => {
                println!("pushgate {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "--config" | "-c" => args.config = Some(value("--config")?.into()),
            "--log-format" => match value("--log-format")?.as_str() {
                "text" => args.json_logs = false,
                "json" => args.json_logs = true,
                other => return Err(format!("--log-format must be text or json, not {other:?}")),
            },
            "--url" => args.url = Some(value("--url")?),
            "--token" => args.token = Some(value("--token")?),
            "--event" => args.event = Some(value("--event")?),
            "--json" => args.json_data = true,
            "--binary" => args.binary = true,
            "-" => args.positional.push(a),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            _ if args.command.is_none()
                && args.positional.is_empty()
                && matches!(a.as_str(), "check" | "run" | "publish") =>
            {
                args.command = Some(a);
            }
            _ => args.positional.push(a),
        }
    }
    Ok(args)
}

/// mimalloc keeps same-size objects together: hundreds of thousands of
/// long-lived connection states interleaved with short-lived handshake
/// buffers fragment glibc's heap (28 % of it free at 10k idle WebSocket
/// connections, 4.3 KiB RSS per connection against 3.3 KiB with mimalloc).
/// Built with `no_thp`: transparent huge pages made the first touch of
/// heap zero 2 MiB at a time (handshake p99 3.9 ms instead of 0.7 ms at 8
/// in flight) and raised the idle process's RSS from 8 to 14 MiB.
#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `--features dhat-heap`: every allocation recorded with its call stack,
/// written out when the server stops (BENCHMARKS.md, "Idle memory per
/// connection"). Far slower; for heap profiles only.
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() -> ExitCode {
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::builder()
        .file_name(
            std::env::var_os("PUSHGATE_DHAT_FILE").unwrap_or_else(|| "dhat-heap.json".into()),
        )
        .build();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pushgate: {e}\n\n{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // With `tracing.otlp`, `run` installs logging together with traces.
    if args.command.as_deref().is_some_and(|c| c != "run") {
        init_logging(args.json_logs);
    }
    match args.command.as_deref() {
        Some("publish") => publish(&args),
        Some("check") => check(&args),
        _ => run(&args),
    }
}

fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

fn init_logging(json: bool) {
    let filter = log_filter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn config_path(args: &Args) -> Result<PathBuf, ExitCode> {
    args.config
        .clone()
        .or_else(|| std::env::var_os("PUSHGATE_CONFIG").map(PathBuf::from))
        .ok_or_else(|| {
            eprintln!("pushgate: no config: pass --config FILE or set PUSHGATE_CONFIG\n\n{USAGE}");
            ExitCode::from(EXIT_USAGE)
        })
}

fn load(args: &Args) -> Result<config::Config, ExitCode> {
    let path = config_path(args)?;
    config::load(&path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// Certificates are files the YAML only names: load them to check them.
fn check_tls(config: &config::Config) -> Result<(), ExitCode> {
    if config.certificates.is_empty() {
        return Ok(());
    }
    tls::server_config(&config.certificates)
        .map(|_| ())
        .map_err(|e| {
            let at = config
                .certificates
                .first()
                .map(|c| c.at)
                .unwrap_or_default();
            eprintln!("{}:{}:{}: {e}", config.source.display(), at.line, at.column);
            ExitCode::from(EXIT_CONFIG)
        })
}

/// The config `run` and `check` both need: parsed, and its certificates
/// loadable.
fn load_checked(args: &Args) -> Result<config::Config, ExitCode> {
    let config = load(args)?;
    check_tls(&config)?;
    Ok(config)
}

fn check(args: &Args) -> ExitCode {
    let config = match load_checked(args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    println!(
        "{}: ok ({} routes, {} upstreams, {} listeners)",
        config.source.display(),
        config.routes.len(),
        config.upstreams.len(),
        config.listen_http.len() + config.listen_https.len() + 1
    );
    ExitCode::SUCCESS
}

/// One core (the process may run on one CPU, e.g. `taskset -c 0`): a
/// current-thread runtime. tokio's multi-thread scheduler with its one
/// worker gave SSE handshakes a p99 of 13.7 ms at 32 in flight against
/// 7.7 ms on the current-thread one (medians of 5 and 7 alternated runs),
/// and costs 3 % more user-space instructions per proxied request
/// (BENCHMARKS.md, issue 17). Why the tail is longer is not settled; the
/// multi-thread scheduler's LIFO slot, which runs a newly spawned task
/// ahead of the connections already waiting, is one candidate. More
/// cores: the multi-thread runtime.
fn runtime() -> tokio::runtime::Runtime {
    let one_core = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_core {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder
        .enable_all()
        .build()
        .expect("the tokio runtime builds with default settings")
}

fn run(args: &Args) -> ExitCode {
    let config = match load_checked(args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    runtime().block_on(async move {
        let traces = match &config.tracing {
            None => {
                init_logging(args.json_logs);
                None
            }
            Some(t) => match pushgate::telemetry::Traces::install(
                &t.endpoint,
                t.sample_ratio,
                args.json_logs,
                log_filter(),
            ) {
                Ok(traces) => Some(traces),
                Err(e) => {
                    eprintln!("pushgate: cannot start traces: {e}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            },
        };
        // Caught before anything listens, so a SIGHUP never kills us.
        #[cfg(unix)]
        let hangups = pushgate::shutdown::hangups();
        let listeners = match app::Listeners::bind(&config).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "Cannot start.");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        let running = match app::start(&config, listeners).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "Cannot start.");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %config.source.display(), "pushgate started");
        let reloader = running.reloader();
        // The outcome is logged by the reload itself.
        #[cfg(unix)]
        pushgate::shutdown::on_hangup(hangups, move || {
            let reloader = reloader.clone();
            async move {
                let _ = reloader.reload().await;
            }
        });
        pushgate::shutdown::signal().await;
        running.drain().await;
        if let Some(traces) = traces {
            traces.shutdown().await;
        }
        ExitCode::SUCCESS
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    pushgate::error::error_chain(e)
}

fn publish(args: &Args) -> ExitCode {
    let [channel, data] = args.positional.as_slice() else {
        eprintln!("pushgate publish: give CHANNEL and DATA (or - for stdin)\n\n{USAGE}");
        return ExitCode::from(EXIT_USAGE);
    };
    if args.binary && args.json_data {
        eprintln!("pushgate publish: --binary and --json exclude each other\n\n{USAGE}");
        return ExitCode::from(EXIT_USAGE);
    }
    let mut body = if args.binary {
        let bytes = if data == "-" {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).map(|_| bytes)
        } else {
            std::fs::read(data)
        };
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                eprintln!("pushgate publish: cannot read {data}: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        serde_json::json!({ "channel": channel, "data_base64": b64 })
    } else {
        let data = if data == "-" {
            let mut s = String::new();
            if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
                eprintln!("pushgate publish: cannot read stdin: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
            s.strip_suffix('\n').map(str::to_owned).unwrap_or(s)
        } else {
            data.clone()
        };
        let data: serde_json::Value = if args.json_data {
            match serde_json::from_str(&data) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("pushgate publish: --json data is not JSON: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            }
        } else {
            serde_json::Value::String(data)
        };
        serde_json::json!({ "channel": channel, "data": data })
    };
    if let Some(e) = &args.event {
        body["event"] = e.clone().into();
    }
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| "http://127.0.0.1:5561".into());
    let url = format!("{}/publish", url.trim_end_matches('/'));
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("PUSHGATE_PUBLISH_TOKEN").ok())
        .filter(|t| !t.is_empty());
    runtime().block_on(async move {
        match pushgate::publish::client::post(&url, token.as_deref(), body.to_string()).await {
            Ok((status, text)) if status.is_success() => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Ok((status, text)) => {
                eprintln!("pushgate publish: {status}: {text}");
                ExitCode::from(EXIT_RUNTIME)
            }
            Err(e) => {
                eprintln!("pushgate publish: {url}: {e}");
                ExitCode::from(EXIT_RUNTIME)
            }
        }
    })
}
