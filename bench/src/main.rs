//! `kalam-bench`: load scenarios against a real KalamDB node, side by side with
//! PostgreSQL. It starts both servers itself (a `kalamdb` binary, release build for numbers
//! worth quoting, and a throw-away PostgreSQL cluster), one after the other so that they
//! never compete for the CPUs, runs the same workloads against each, checks every result
//! for correctness before it counts, and prints one table: p50/p99/throughput per system
//! and the KalamDB/PostgreSQL ratio (`--json FILE` writes the same as JSON). With `--rounds
//! N` it does all that N times and reports the medians and how often each target was met.
//!
//! - [`kalam`]: the node and its HTTP scenarios (`insert-seq`, `insert-concurrent`,
//!   `insert-batch`, `select-user`) and `flush` (KalamDB only);
//! - [`live`]: the live-query scenarios (`live-latency`, `live-fanout-1k`,
//!   `live-fanout-10k`; `live-memory` and `live-stream` are KalamDB only);
//! - [`pg`]: the PostgreSQL server's lifecycle and its `LISTEN` connections;
//! - [`pg_scenarios`]: the PostgreSQL side of the comparable scenarios;
//! - [`measure`]: timing, histograms and checks both sides share;
//! - [`report`]: the per-scenario result and the side-by-side table.
//!
//! Durability is matched as closely as the two allow: KalamDB's default `sync_writes =
//! false` (WAL written on every write, no fsync: survives `kill -9` of the node) runs against
//! PostgreSQL with `synchronous_commit = off` (fsync stays on, but a commit may wait in its
//! WAL buffers for up to 600 ms, which a crash of PostgreSQL loses); `--sync-writes` against
//! `synchronous_commit = on`.

mod kalam;
mod live;
mod measure;
mod pg;
mod pg_scenarios;
mod report;

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use clap::Parser;

use crate::measure::progress;

/// The load generator shares the machine's cores with the server it measures, so its own
/// costs are part of every number: mimalloc instead of glibc's malloc, which in the fan-out
/// scenarios (messages allocated by reader tasks, freed by the checking task) spent a third
/// of the tool's CPU. Both systems' clients run on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "kalam-bench",
    about = "Load scenarios against a KalamDB node, side by side with PostgreSQL"
)]
struct Args {
    /// The `kalamdb` binary to start.
    #[arg(long, default_value = "target/release/kalamdb")]
    kalamdb: PathBuf,
    /// Small sizes: a few seconds per scenario, for CI (checks correctness, not speed).
    #[arg(long)]
    quick: bool,
    /// Fsync every write: KalamDB `sync_writes = true`, PostgreSQL `synchronous_commit = on`.
    #[arg(long)]
    sync_writes: bool,
    /// Write the results as JSON to this file too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Measure KalamDB alone (for machines without PostgreSQL); its columns show "-".
    #[arg(long)]
    no_postgres: bool,
    /// Directory holding PostgreSQL's `initdb` and `postgres`. Default: `pg_config
    /// --bindir`, then the newest /usr/lib/postgresql/<major>/bin, then PATH.
    #[arg(long, env = "KALAM_BENCH_PG_BINDIR")]
    pg_bindir: Option<PathBuf>,
    /// Run only these scenarios (comma-separated names of the table, e.g.
    /// `--only live-memory`), each system on a fresh server as always.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(report::ORDER))]
    only: Vec<String>,
    /// Measure both systems this many times, each round on fresh servers, alternating which
    /// goes first, and report the medians and how many rounds met each target.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
}

impl Args {
    /// Whether scenario `name` is to run.
    fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

/// Sizes of every scenario, the same for both systems.
struct Sizes {
    seq_inserts: usize,
    concurrent_writers: usize,
    concurrent_inserts_each: usize,
    batches: usize,
    batch_rows: usize,
    users: usize,
    rows_per_user: usize,
    selects: usize,
    flush_rows: usize,
    live: live::LiveSizes,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                seq_inserts: 200,
                concurrent_writers: 16,
                concurrent_inserts_each: 20,
                batches: 5,
                batch_rows: 1000,
                users: 20,
                rows_per_user: 100,
                selects: 50,
                flush_rows: 20_000,
                live: live::LiveSizes::new(true),
            }
        } else {
            Sizes {
                seq_inserts: 5_000,
                concurrent_writers: 16,
                concurrent_inserts_each: 2_000,
                batches: 200,
                batch_rows: 1000,
                users: 1000,
                rows_per_user: 1000,
                selects: 2_000,
                flush_rows: 200_000,
                live: live::LiveSizes::new(false),
            }
        }
    }
}

/// Raises the soft limit of open files towards the hard one: the fan-out scenarios open
/// 1,000 connections at once.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            let wanted = limit.rlim_max.min(65_536);
            if limit.rlim_cur < wanted {
                limit.rlim_cur = wanted;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}

/// The CPU model of `/proc/cpuinfo` (Linux), for the report.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|line| {
                let (_, model) = line.strip_prefix("model name")?.split_once(':')?;
                Some(model.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "CPU model unknown".into())
}

async fn run(args: &Args) -> Result<()> {
    raise_open_files_limit();
    let sizes = Sizes::new(args.quick);
    // Fail before any long run when a server cannot be run or the results not be written.
    let kalamdb_version = kalam::check_binary(&args.kalamdb)?;
    if !args.quick && kalamdb_version.contains("debug build") {
        progress(&format!(
            "warning: {} is a debug build ({kalamdb_version}): its numbers are not the node's",
            args.kalamdb.display()
        ));
    }
    if let Some(path) = &args.json {
        report::Report::check_json_path(path)?;
    }
    let pg_bins = if args.no_postgres {
        None
    } else {
        Some(pg::PgBinaries::locate(args.pg_bindir.as_deref())?)
    };

    let rounds = args.rounds as usize;
    let mut report = report::Report {
        quick: args.quick,
        kalamdb: format!("{} ({kalamdb_version})", args.kalamdb.display()),
        sync_writes: args.sync_writes,
        postgres: None,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model: cpu_model(),
        rounds: Vec::with_capacity(rounds),
    };
    for round in 1..=rounds {
        if rounds > 1 {
            progress(&format!("round {round} of {rounds}"));
        }
        // PostgreSQL first in the first round, so that a problem with it shows at once;
        // after that the order alternates, so that a machine growing slower or faster
        // during a run does not favour one system. Each server is stopped before the other
        // starts.
        let pg = pg_bins.as_ref();
        let measured: Result<_> = async {
            if round % 2 == 1 {
                let postgres = run_postgres(args, pg, &sizes, &mut report.postgres).await?;
                Ok((kalam::run(args, &sizes).await?, postgres))
            } else {
                let kalamdb = kalam::run(args, &sizes).await?;
                Ok((
                    kalamdb,
                    run_postgres(args, pg, &sizes, &mut report.postgres).await?,
                ))
            }
        }
        .await;
        let (kalamdb, postgres) = match measured {
            Ok(both) => both,
            Err(e) => return Err(report.keep_after_failure(args.json.as_deref(), round, e)),
        };
        report.rounds.push(report::compare(kalamdb, postgres));
        if rounds > 1 {
            report.print_round(round);
        }
    }
    report.print();
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    Ok(())
}

/// One round of the PostgreSQL side on a throw-away cluster, stopped before this returns;
/// nothing without `bins` (`--no-postgres`). `info` gets the server's own settings.
async fn run_postgres(
    args: &Args,
    bins: Option<&pg::PgBinaries>,
    sizes: &Sizes,
    info: &mut Option<report::PgInfo>,
) -> Result<Vec<report::Outcome>> {
    let Some(bins) = bins else {
        return Ok(Vec::new());
    };
    let settings = pg::Settings {
        max_connections: sizes.live.max_fanout_connections() + 100,
        synchronous_commit: args.sync_writes,
    };
    progress(&format!(
        "postgres: starting a throw-away cluster ({}), synchronous_commit = {}, \
         max_connections = {}",
        bins.bindir().display(),
        if settings.synchronous_commit {
            "on"
        } else {
            "off"
        },
        settings.max_connections
    ));
    let server = pg::PgServer::start(bins, &settings).await?;
    *info = Some(server.info().await?);
    let outcomes = pg_scenarios::run(args, &server, sizes).await?;
    progress("postgres: stopping");
    drop(server);
    Ok(outcomes)
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, with the signal's name.
async fn interrupted() -> &'static str {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => "Ctrl-C",
        _ = term => "SIGTERM",
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // The scenarios run in a task of the runtime, as an application's requests do, not in
    // `main`'s `block_on`: there every socket event reached the waiting code through another
    // thread (a worker polls the sockets, then wakes the main thread), one more wakeup per
    // round trip for both systems' clients.
    let mut run = tokio::spawn(async move { run(&args).await });
    tokio::select! {
        result = &mut run => result.map_err(|e| anyhow!("the run panicked: {e}"))?,
        signal = interrupted() => {
            // Aborting drops the run, which stops the node and PostgreSQL and removes their
            // directories (their Drop impls); awaiting it waits until that is done.
            run.abort();
            let _ = run.await;
            bail!("interrupted ({signal}): the servers were stopped")
        }
    }
}
