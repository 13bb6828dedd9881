//! A `kalam-operator run` process against the control plane, as a replica of the chart's
//! Deployment would run: its kubeconfig (a ServiceAccount token or the admin's), its identity
//! (`POD_NAME`), its lease, and its `/metrics` and `/healthz` port.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::process::{die_with_parent_tokio, eventually, free_port, log_tail};

/// How to run one operator process.
pub struct OperatorArgs<'a> {
    pub kubeconfig: &'a Path,
    /// Watched namespace, also the namespace of the lease.
    pub namespace: &'a str,
    /// `POD_NAME`: the holder identity in the Lease.
    pub identity: &'a str,
    /// `--endpoint-override` values: `<ns>/<cluster>=<url>`.
    pub overrides: Vec<String>,
    pub resync_seconds: u64,
}

/// A running operator.
pub struct Operator {
    child: Child,
    pub identity: String,
    /// `http://127.0.0.1:<port>` of /metrics and /healthz.
    pub metrics_url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Operator {
    /// Starts the operator and waits until `/healthz` answers (it serves before it holds the
    /// lease, so a follower is healthy too).
    pub async fn start(args: OperatorArgs<'_>) -> Operator {
        let dir = tempfile::Builder::new()
            .prefix("kalam-e2e-operator-")
            .tempdir()
            .expect("a directory for the operator log");
        let log = dir.path().join("operator.log");
        let out = std::fs::File::create(&log).expect("the operator log");
        let err = out.try_clone().expect("the operator log");
        let port = free_port();
        let mut cmd = Command::new(crate::workspace_bin("kalam-operator"));
        cmd.arg("run")
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--watch-namespace")
            .arg(args.namespace)
            .arg("--resync-seconds")
            .arg(args.resync_seconds.to_string());
        for o in &args.overrides {
            cmd.arg("--endpoint-override").arg(o);
        }
        cmd.env_remove("WATCH_NAMESPACE")
            .env_remove("POD_NAMESPACE")
            .env("KUBECONFIG", args.kubeconfig)
            .env("POD_NAME", args.identity)
            .env("KALAM_OPERATOR_LOG", "info,kalam_operator=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        die_with_parent_tokio(&mut cmd);
        let child = cmd.spawn().expect("spawning kalam-operator");
        let op = Operator {
            child,
            identity: args.identity.to_string(),
            metrics_url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        let url = format!("{}/healthz", op.metrics_url);
        let http = reqwest::Client::new();
        eventually(
            &format!("/healthz of operator {}", op.identity),
            Duration::from_secs(30),
            || async {
                match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("{}; log:\n{}", r.status(), op.log())),
                    Err(e) => Err(format!("{e}; log:\n{}", op.log())),
                }
            },
        )
        .await;
        op
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.metrics_url))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the /metrics body")
    }

    /// The sum of the samples of `metric` whose labels contain every `label="value"` pair.
    pub async fn metric_sum(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.split(['{', ' ']).next() == Some(metric)
                    && labels
                        .iter()
                        .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The end of the operator's log.
    pub fn log(&self) -> String {
        log_tail(&self.log, 60)
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: the lease is left to expire, as when a node dies.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}
