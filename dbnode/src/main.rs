//! `kalamdb`: run a node (`serve`) or mint a development token (`token`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use axum::serve::ListenerExt;
use clap::{Parser, Subcommand};
use kalam_dbnode::auth::{self, parse_duration, Authenticator};
use kalam_dbnode::config::{Config, LogFormat, Overrides};
use kalam_dbnode::ids::{Role, UserId};
use kalam_dbnode::node::Node;
use tracing_subscriber::EnvFilter;

/// mimalloc: scans and writes decode rows into many small allocations, where glibc's malloc
/// was a third of a hot-tier scan's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `--version` names a debug build as one, so that a load tool does not report its numbers as
/// the node's.
#[cfg(debug_assertions)]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (debug build)");
#[cfg(not(debug_assertions))]
const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Parser)]
#[command(name = "kalamdb", version = VERSION, about = "KalamDB database node")]
struct Cli {
    /// server.toml to read settings from (KALAMDB_* variables and flags override it).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data directory (RocksDB, catalog, generated JWT secret).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node.
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Print a token signed with this node's secret.
    Token {
        /// The user id (the token's `sub`).
        #[arg(long)]
        user: String,
        /// Give the token the admin role.
        #[arg(long)]
        admin: bool,
        /// How long the token is valid, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "24h")]
        ttl: String,
    },
}

fn main() -> ExitCode {
    // Crash tests name flush steps in FAILPOINTS; release builds never read it.
    #[cfg(debug_assertions)]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let listen = match &cli.command {
        Command::Serve { listen } => *listen,
        Command::Token { .. } => None,
    };
    let config = match Config::load(
        cli.config.as_deref(),
        &Overrides {
            listen,
            data_dir: cli.data_dir.clone(),
        },
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kalamdb: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve { .. } => serve(config),
        Command::Token { user, admin, ttl } => token(&config, &user, admin, &ttl),
    }
}

fn token(config: &Config, user: &str, admin: bool, ttl: &str) -> ExitCode {
    let result = (|| {
        let user = UserId::new(user)?;
        let ttl = parse_duration(ttl)
            .filter(|d| *d >= Duration::from_secs(1))
            .ok_or_else(|| {
                kalam_dbnode::error::KalamError::InvalidRequest(format!(
                    "--ttl '{ttl}' is not a duration such as 1h"
                ))
            })?;
        let (secret, _) = auth::load_or_create_secret(
            config.jwt_secret.as_ref().map(|s| s.expose()),
            &config.data_dir,
            false,
        )?;
        Authenticator::new(&secret).mint(&user, if admin { Role::Admin } else { Role::User }, ttl)
    })();
    match result {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kalamdb token: {e}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_env("KALAMDB_LOG")
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(config: Config) -> ExitCode {
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        // Deep but legal SQL (a 2,000-term expression) recurses in planning; big virtual stacks
        // turn that into work instead of a crash. Only touched pages cost memory.
        .thread_stack_size(64 * 1024 * 1024)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kalamdb: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "kalamdb stopped");
            eprintln!("kalamdb: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let timeouts = kalam_dbnode::api::Timeouts {
        read: config.http_read_timeout(),
        // How long requests in flight may hold a stop back.
        shutdown: std::time::Duration::from_millis(config.shutdown_timeout_ms),
    };
    tracing::info!(data_dir = %config.data_dir.display(), node_id = %config.node_id, sync_writes = config.sync_writes, "opening node");
    let node = Node::open(config)?;
    node.start_background();
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    // Nagle off: responses and live frames are small, and a frame written while the previous
    // one is unacknowledged would otherwise wait for the peer's delayed ACK (tens of ms).
    let listener = listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY on an accepted connection");
        }
    });
    tracing::info!(%addr, "serving");
    // The one line on stdout: tests and scripts wait for it (port 0 picks a free port).
    println!("kalamdb listening on http://{addr}");
    std::io::stdout().flush()?;
    let app = kalam_dbnode::api::router(node.clone());
    kalam_dbnode::api::serve(
        listener,
        app,
        async move {
            shutdown_signal().await;
            node.set_draining();
            tracing::info!("shutting down");
        },
        timeouts,
    )
    .await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
