//! A PostgreSQL server started for the run, the way the tool starts its KalamDB node: a
//! throw-away cluster (`initdb` into a temporary directory), `postgres` on a free loopback
//! port with its socket in that directory, stopped (fast shutdown) and removed on drop,
//! which also runs on an error, a panic, and Ctrl-C or SIGTERM (main turns those into an
//! error). PostgreSQL refuses to run as root: when the tool runs as root (CI does), the
//! directory is handed to the `postgres` user and `initdb` and `postgres` run through
//! `runuser -u postgres --`.
//!
//! Clients are `tokio-postgres` connections over TCP on 127.0.0.1, like the KalamDB
//! clients. [`PgServer::listen`] opens a `LISTEN` connection whose notifications, each a
//! row as JSON (the trigger calls `pg_notify(channel, row_to_json(NEW)::text)`), are read
//! with `Connection::poll_message` and handed on, parsed and stamped with their arrival.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use kalam_client::wire::Row;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

use crate::measure::TempDir;
use crate::report::PgInfo;

/// The cluster's superuser (`initdb -U`); trust authentication, loopback only.
const USER: &str = "bench";
/// How long the server may take to accept connections after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

const MISSING: &str = "PostgreSQL server binaries (initdb, postgres) not found: looked in \
    `pg_config --bindir`, /usr/lib/postgresql/*/bin and PATH. Install them (Debian/Ubuntu: \
    `apt-get install -y postgresql`), point --pg-bindir at them, or pass --no-postgres to \
    measure KalamDB alone.";

/// Where `initdb` and `postgres` are, and whether they must run as the `postgres` user.
pub struct PgBinaries {
    bindir: PathBuf,
    run_as_postgres: bool,
}

impl PgBinaries {
    /// `explicit` (`--pg-bindir`), else `pg_config --bindir`, else the newest
    /// `/usr/lib/postgresql/<major>/bin` (Debian, Ubuntu), else PATH.
    pub fn locate(explicit: Option<&Path>) -> Result<Self> {
        let bindir = match explicit {
            Some(dir) if has_server(dir) => dir.to_path_buf(),
            Some(dir) => bail!(
                "--pg-bindir {}: no initdb and postgres there. {MISSING}",
                dir.display()
            ),
            None => candidates()
                .into_iter()
                .find(|dir| has_server(dir))
                .ok_or_else(|| anyhow!(MISSING))?,
        };
        // SAFETY: geteuid has no preconditions and cannot fail.
        let run_as_postgres = unsafe { libc::geteuid() } == 0;
        if run_as_postgres {
            let user = Command::new("id").args(["-u", "postgres"]).output();
            if !matches!(&user, Ok(out) if out.status.success()) {
                bail!(
                    "running as root, which PostgreSQL refuses: the tool starts it as the user \
                     `postgres`, which does not exist here (the Debian package `postgresql` \
                     creates it). Create it, run as another user, or pass --no-postgres."
                );
            }
            let runuser = Command::new("runuser")
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !matches!(runuser, Ok(status) if status.success()) {
                bail!(
                    "running as root: `runuser` (util-linux) is needed to start PostgreSQL as \
                     the user `postgres`, and it is not on PATH"
                );
            }
        }
        Ok(Self {
            bindir,
            run_as_postgres,
        })
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// `program` of the bin directory, through `runuser -u postgres --` when root.
    fn command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        if self.run_as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }
}

fn has_server(dir: &Path) -> bool {
    dir.join("postgres").is_file() && dir.join("initdb").is_file()
}

fn candidates() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| {
                let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
                Some((major, entry.path().join("bin")))
            })
            .collect();
        versions.sort_by(|a, b| b.0.cmp(&a.0));
        dirs.extend(versions.into_iter().map(|(_, dir)| dir));
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

/// Server settings that differ from PostgreSQL's defaults.
pub struct Settings {
    /// Enough for one `LISTEN` connection per subscriber of the 1,000-subscriber fan-out,
    /// plus the scenario's other connections.
    pub max_connections: usize,
    /// `on` to match KalamDB's `sync_writes = true` (fsync per commit); `off` to match its
    /// default (WAL written, no fsync per write). `fsync` itself always stays on.
    pub synchronous_commit: bool,
}

/// A running server; stopped and its directory removed on drop.
pub struct PgServer {
    child: Child,
    data: PathBuf,
    log: PathBuf,
    conninfo: String,
    /// Dropped after [`Drop::drop`] below has stopped the server.
    _dir: TempDir,
}

/// One notification of a [`PgServer::listen`] connection: its row, or why there is none
/// (a payload that is not a JSON object, or the connection failed: then it is the last).
pub struct PgEvent {
    /// When it was read and parsed.
    pub at: Instant,
    pub row: std::result::Result<Row, String>,
}

/// A `LISTEN` connection; dropping it closes the connection.
pub struct Listener {
    _client: Client,
}

impl PgServer {
    /// Creates a cluster in a temporary directory and starts `postgres` on it; returns once
    /// it accepts connections.
    pub async fn start(bins: &PgBinaries, settings: &Settings) -> Result<Self> {
        let base = std::env::temp_dir().join(format!("kalam-bench-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let sockets = base.join("sockets");
        std::fs::create_dir_all(&sockets)
            .with_context(|| format!("creating {}", sockets.display()))?;
        let dir = TempDir(base.clone());
        if bins.run_as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&base)
                .status()
                .context("running chown")?;
            if !status.success() {
                bail!("chown -R postgres: {} failed ({status})", base.display());
            }
        }

        let data = base.join("data");
        let initdb_log = base.join("initdb.log");
        let out = File::create(&initdb_log)?;
        let status = bins
            .command("initdb")
            .current_dir(&base)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()
            .with_context(|| format!("running {}/initdb", bins.bindir.display()))?;
        if !status.success() {
            bail!("initdb failed ({status}):\n{}", tail(&initdb_log));
        }

        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = base.join("postgres.log");
        let out = File::create(&log)?;
        let synchronous_commit = if settings.synchronous_commit {
            "on"
        } else {
            "off"
        };
        let child = bins
            .command("postgres")
            .current_dir(&base)
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&sockets)
            .arg("-p")
            .arg(port.to_string())
            .arg("-c")
            .arg("listen_addresses=127.0.0.1")
            .arg("-c")
            .arg(format!("max_connections={}", settings.max_connections))
            .arg("-c")
            .arg(format!("synchronous_commit={synchronous_commit}"))
            .arg("-c")
            .arg("fsync=on")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}/postgres", bins.bindir.display()))?;
        let mut server = PgServer {
            child,
            data,
            log,
            conninfo: format!(
                "host=127.0.0.1 port={port} user={USER} dbname=postgres application_name=kalam-bench"
            ),
            _dir: dir,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match tokio_postgres::connect(&self.conninfo, NoTls).await {
                Ok((client, connection)) => {
                    // Without its client the connection says goodbye and ends.
                    drop(client);
                    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
                    return Ok(());
                }
                Err(e) => {
                    if let Some(status) = self.child.try_wait()? {
                        bail!(
                            "postgres exited ({status}) before accepting connections; its log:\n{}",
                            tail(&self.log)
                        );
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "postgres did not accept connections within {START_TIMEOUT:?} ({e}); its log:\n{}",
                            tail(&self.log)
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// A new connection, driven by a task of its own.
    pub async fn connect(&self) -> Result<Client> {
        let (client, connection) = tokio_postgres::connect(&self.conninfo, NoTls)
            .await
            .with_context(|| format!("connecting to PostgreSQL ({})", self.conninfo))?;
        tokio::spawn(async move {
            // An error here fails the client's next call, which reports it.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// A new connection that has run `LISTEN <channel>`. Its task reads every notification
    /// (`Connection::poll_message`), parses the payload as a JSON object and hands it to
    /// `on_event`, stamped (errors name `conn`), in that task, as KalamDB's side handles a
    /// frame in the task that read it; it ends when the connection does, after an error, or
    /// when `on_event` returns false.
    pub async fn listen(
        &self,
        channel: &str,
        conn: usize,
        mut on_event: impl FnMut(PgEvent) -> bool + Send + 'static,
    ) -> Result<Listener> {
        let (client, mut connection) = tokio_postgres::connect(&self.conninfo, NoTls)
            .await
            .with_context(|| format!("connecting to PostgreSQL ({})", self.conninfo))?;
        let expected_channel = channel.to_owned();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                let row = match message {
                    Ok(AsyncMessage::Notification(n)) if n.channel() == expected_channel => {
                        serde_json::from_str::<Row>(n.payload()).map_err(|e| {
                            format!(
                                "connection {conn}: payload {:?} is not a JSON object: {e}",
                                n.payload()
                            )
                        })
                    }
                    Ok(AsyncMessage::Notification(n)) => Err(format!(
                        "connection {conn}: a notification on channel {:?}",
                        n.channel()
                    )),
                    // Notices (warnings and the like) are no events.
                    Ok(_) => continue,
                    Err(e) => Err(format!("connection {conn}: {e}")),
                };
                let failed = row.is_err();
                let event = PgEvent {
                    at: Instant::now(),
                    row,
                };
                if !on_event(event) || failed {
                    break;
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {channel}"))
            .await
            .with_context(|| format!("LISTEN {channel}"))?;
        Ok(Listener { _client: client })
    }

    /// Version and durability settings as the server reports them.
    pub async fn info(&self) -> Result<PgInfo> {
        let c = self.connect().await?;
        Ok(PgInfo {
            version: show(&c, "server_version").await?,
            synchronous_commit: show(&c, "synchronous_commit").await?,
            fsync: show(&c, "fsync").await?,
            max_connections: show(&c, "max_connections").await?,
        })
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return; // already gone (its directory is removed by `_dir`)
        }
        // Fast shutdown: SIGINT to the postmaster (the child itself, or the child of
        // `runuser`, whose pid the data directory records).
        let pid = postmaster_pid(&self.data).unwrap_or(self.child.id() as i32);
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    // SAFETY: as above.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
    }
}

fn postmaster_pid(data: &Path) -> Option<i32> {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

async fn show(c: &Client, setting: &str) -> Result<String> {
    let messages = c.simple_query(&format!("SHOW {setting}")).await?;
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .ok_or_else(|| anyhow!("SHOW {setting} returned no row"))
}

/// The last lines of a log file, for an error message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
