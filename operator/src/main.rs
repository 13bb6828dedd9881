//! `kalam-operator`: run the controllers (`run`) or print the CRDs (`crd`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use clap::{Args, Parser, Subcommand};
use kalam_operator::context::{Context, EndpointOverride};
use kalam_operator::metrics::Metrics;
use kalam_operator::{controllers, crd, leader};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "kalam-operator",
    version,
    about = "Kubernetes operator of KalamDB"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers (only the replica holding the lease reconciles).
    Run(RunArgs),
    /// Print the three CRDs as one multi-document YAML stream.
    Crd,
}

#[derive(Args)]
struct RunArgs {
    /// Address of the HTTP server with /metrics and /healthz.
    #[arg(long, default_value = "0.0.0.0:8081")]
    metrics_listen: SocketAddr,
    /// Namespace of the leader-election Lease (default: POD_NAMESPACE, else "default").
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "kalam-operator")]
    lease_name: String,
    /// Reconcile only the resources of this Kubernetes namespace (default: every namespace).
    /// The lease then lives in this namespace too unless --lease-namespace says otherwise.
    #[arg(long, env = "WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Drift correction period: every resource is checked against the nodes this often.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    resync_seconds: u64,
    /// TEST ONLY: send the SQL of cluster <k8s-namespace>/<cluster> to <url> instead of the
    /// per-pod DNS names, e.g. `default/kc=http://127.0.0.1:8080`. Repeatable. Meant for
    /// tests that run a node outside the cluster; never set it in a deployment.
    #[arg(long = "endpoint-override", value_name = "NS/CLUSTER=URL")]
    endpoint_overrides: Vec<EndpointOverride>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match crd::all_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kalam-operator: rendering the CRDs: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            init_logging();
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("kalam-operator: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "kalam-operator stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// JSON lines on stderr; `KALAM_OPERATOR_LOG` is a `tracing` filter (default `info`).
fn init_logging() {
    let filter =
        EnvFilter::try_from_env("KALAM_OPERATOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    let metrics = Arc::new(Metrics::new()?);
    let listener = tokio::net::TcpListener::bind(args.metrics_listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "serving /metrics and /healthz");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(render_metrics))
        .with_state(metrics.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let client = kube::Client::try_default().await?;
    let identity = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("kalam-operator-{}", std::process::id()));
    let watch_namespace = args.watch_namespace.filter(|s| !s.is_empty());
    let lease_namespace = args
        .lease_namespace
        .filter(|s| !s.is_empty())
        .or_else(|| watch_namespace.clone())
        .unwrap_or_else(|| "default".to_string());
    if !args.endpoint_overrides.is_empty() {
        tracing::warn!(
            overrides = ?args.endpoint_overrides,
            "--endpoint-override is set: SQL goes to these URLs, not to the pods (test only)"
        );
    }

    let mut leadership = leader::acquire(
        client.clone(),
        &lease_namespace,
        &args.lease_name,
        &identity,
    )
    .await?;
    let ctx = Context::new(
        client,
        metrics,
        args.endpoint_overrides,
        Some(identity),
        std::time::Duration::from_secs(args.resync_seconds),
    );
    tokio::select! {
        () = controllers::run(ctx, watch_namespace.as_deref()) => {
            tracing::info!("controllers stopped; exiting");
            Ok(())
        }
        () = leadership.lost() => {
            // Another replica may already reconcile: stop at once, Kubernetes restarts us.
            tracing::error!("lost the leader lease; exiting so that the pod restarts as a follower");
            std::process::exit(1);
        }
        served = server => {
            match served {
                Ok(Ok(())) => Err("the metrics server stopped".into()),
                Ok(Err(e)) => Err(format!("the metrics server failed: {e}").into()),
                Err(e) => Err(format!("the metrics server task failed: {e}").into()),
            }
        }
    }
}

async fn render_metrics(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}
