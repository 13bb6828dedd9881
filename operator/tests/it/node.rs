//! A real `kalamdb serve` process on a loopback port with a temporary data directory, started
//! the way the node's own black-box suite does it, for the SQL side of the reconcile tests.
//!
//! The binary is `$KALAMDB_BIN`, else the `kalamdb` built beside this test binary by the
//! workspace test run (`target/<profile>/kalamdb`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kalam_client::{ClientError, KalamClient, Role, SqlSuccess};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The node's JWT secret; the fake API server hands it out in the cluster's Secret.
pub const TEST_SECRET: &str = "kalam-operator-it-secret-5c2e9a71f04b";
/// What the node prints on stdout once it listens.
const LISTEN_PREFIX: &str = "kalamdb listening on ";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

fn kalamdb_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("KALAMDB_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/it-<hash> -> target/<profile>/kalamdb
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    let bin = profile_dir.join(format!("kalamdb{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} does not exist: run the workspace tests (`cargo test --workspace`), or \
         `cargo build -p kalam-dbnode --bin kalamdb`, or set KALAMDB_BIN",
        bin.display()
    );
    bin
}

/// A running node; dropping it kills the process and deletes its data.
pub struct Node {
    _child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node and waits until `/readyz` answers.
    pub async fn start() -> Node {
        let dir = tempfile::Builder::new()
            .prefix("kalam-operator-it-")
            .tempdir()
            .expect("a temporary directory");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("the data directory");
        let stderr_path = dir.path().join("node.stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("the node's stderr log");

        let mut cmd = Command::new(kalamdb_bin());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("KALAMDB_") {
                cmd.env_remove(&key);
            }
        }
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("KALAMDB_JWT_SECRET", TEST_SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawning kalamdb");

        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let url = loop {
            match tokio::time::timeout_at(deadline, lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    if let Some(rest) = line.strip_prefix(LISTEN_PREFIX) {
                        break rest.trim().to_string();
                    }
                }
                other => panic!(
                    "kalamdb did not print `{LISTEN_PREFIX}...` ({other:?}); stderr:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                ),
            }
        };
        // Keep draining stdout so that the node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let client = KalamClient::new(url.clone()).expect("the node's URL");
        loop {
            if matches!(client.ready().await, Ok(true)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kalamdb at {url} never became ready; stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Node {
            _child: child,
            url,
            dir,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A directory that lives as long as the node (for filesystem locations).
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    fn admin(&self) -> KalamClient {
        let token = kalam_client::token::mint(
            TEST_SECRET.as_bytes(),
            "it-admin",
            Role::Admin,
            Duration::from_secs(600),
        )
        .expect("an admin token");
        KalamClient::new(self.url.clone())
            .expect("the node's URL")
            .with_token(token)
    }

    /// Runs admin SQL; panics when it fails.
    pub async fn sql(&self, sql: &str) -> SqlSuccess {
        self.admin()
            .sql(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", e.with_causes()))
    }

    /// Runs admin SQL that must fail, and returns the error.
    pub async fn sql_err(&self, sql: &str) -> ClientError {
        match self.admin().sql(sql).await {
            Ok(ok) => panic!("{sql} succeeded: {ok:?}"),
            Err(e) => e,
        }
    }

    /// The rows of the first result of `sql`.
    pub async fn rows(&self, sql: &str) -> Vec<serde_json::Map<String, Value>> {
        self.sql(sql)
            .await
            .results
            .into_iter()
            .next()
            .map(|r| r.rows)
            .unwrap_or_default()
    }

    /// The `SHOW NAMESPACES` row of `name`, if it exists.
    pub async fn namespace(&self, name: &str) -> Option<serde_json::Map<String, Value>> {
        self.rows("SHOW NAMESPACES")
            .await
            .into_iter()
            .find(|r| r.get("name").and_then(Value::as_str) == Some(name))
    }

    /// The `system.storage_locations` row of `name`, if it exists.
    pub async fn location(&self, name: &str) -> Option<serde_json::Map<String, Value>> {
        self.rows(&format!(
            "SELECT * FROM system.storage_locations WHERE location_name = '{name}'"
        ))
        .await
        .into_iter()
        .next()
    }
}
