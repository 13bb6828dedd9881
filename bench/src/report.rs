//! The result of one scenario on one system ([`Outcome`]), and the report of a run: one
//! table with both systems side by side and their ratio, notes on what each number
//! measured, and the same as JSON.

use std::path::Path;

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::measure::ms;

#[derive(serde::Serialize)]
pub struct Outcome {
    pub scenario: &'static str,
    pub operations: usize,
    pub rows: usize,
    pub seconds: f64,
    pub rows_per_sec: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub server_p50_ms: Option<f64>,
    pub server_p99_ms: Option<f64>,
    /// What exactly was measured, where a system needs saying so (PostgreSQL's fan-out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Numbers of one scenario only (subscription counts, RSS, ...): JSON fields of their
    /// own, and `key=value` notes under the table.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Outcome {
    /// Percentiles from the client-side latencies and, when measured, the server's own timing.
    pub fn new(
        scenario: &'static str,
        operations: usize,
        rows: usize,
        seconds: f64,
        client: &Histogram<u64>,
        server: Option<&Histogram<u64>>,
    ) -> Self {
        let server = server.filter(|h| !h.is_empty());
        Self {
            scenario,
            operations,
            rows,
            seconds,
            rows_per_sec: if seconds > 0.0 {
                rows as f64 / seconds
            } else {
                0.0
            },
            p50_ms: ms(client, 0.5),
            p99_ms: ms(client, 0.99),
            max_ms: (!client.is_empty()).then(|| client.max() as f64 / 1000.0),
            server_p50_ms: server.and_then(|h| ms(h, 0.5)),
            server_p99_ms: server.and_then(|h| ms(h, 0.99)),
            method: None,
            extra: Map::new(),
        }
    }

    /// Adds a scenario-specific number.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// Says what was measured.
    pub fn method(mut self, text: impl Into<String>) -> Self {
        self.method = Some(text.into());
        self
    }

    fn notes(&self) -> String {
        let mut notes = vec![format!("ops={} rows={}", self.operations, self.rows)];
        if let Some(max) = self.max_ms {
            notes.push(format!("max_ms={max:.3}"));
        }
        if let (Some(p50), Some(p99)) = (self.server_p50_ms, self.server_p99_ms) {
            notes.push(format!("server_p50_ms={p50:.3} server_p99_ms={p99:.3}"));
        }
        notes.extend(self.extra.iter().map(|(key, value)| match value.as_f64() {
            Some(x) if value.is_f64() => format!("{key}={x:.3}"),
            _ => format!("{key}={value}"),
        }));
        notes.join(" ")
    }
}

/// Scenarios in the order of the table; any other name follows them.
pub const ORDER: &[&str] = &[
    "insert-seq",
    "insert-concurrent",
    "insert-batch",
    "select-user",
    "live-latency",
    "live-fanout-1k",
    "live-fanout-10k",
    "flush",
    "live-memory",
    "live-stream",
];

/// One scenario, both systems.
pub struct Comparison {
    pub scenario: &'static str,
    pub kalamdb: Option<Outcome>,
    pub postgres: Option<Outcome>,
}

impl Comparison {
    /// KalamDB p99 / PostgreSQL p99: below 1 favours KalamDB.
    pub fn p99_ratio(&self) -> Option<f64> {
        let k = self.kalamdb.as_ref()?.p99_ms?;
        let p = self.postgres.as_ref()?.p99_ms?;
        (p > 0.0).then(|| k / p)
    }

    /// KalamDB rows/s / PostgreSQL rows/s: above 1 favours KalamDB.
    pub fn throughput_ratio(&self) -> Option<f64> {
        let k = self.kalamdb.as_ref()?.rows_per_sec;
        let p = self.postgres.as_ref()?.rows_per_sec;
        (p > 0.0).then(|| k / p)
    }
}

/// Pairs the outcomes of the two systems by scenario name, in [`ORDER`].
pub fn compare(kalamdb: Vec<Outcome>, postgres: Vec<Outcome>) -> Vec<Comparison> {
    let mut rows: Vec<Comparison> = Vec::new();
    for outcome in kalamdb {
        rows.push(Comparison {
            scenario: outcome.scenario,
            kalamdb: Some(outcome),
            postgres: None,
        });
    }
    for outcome in postgres {
        match rows.iter_mut().find(|c| c.scenario == outcome.scenario) {
            Some(row) => row.postgres = Some(outcome),
            None => rows.push(Comparison {
                scenario: outcome.scenario,
                kalamdb: None,
                postgres: Some(outcome),
            }),
        }
    }
    let rank = |name: &str| ORDER.iter().position(|n| *n == name).unwrap_or(ORDER.len());
    rows.sort_by_key(|c| rank(c.scenario));
    rows
}

/// The PostgreSQL server a run measured, as it reported its own settings.
pub struct PgInfo {
    pub version: String,
    pub synchronous_commit: String,
    pub fsync: String,
    pub max_connections: String,
}

pub struct Report {
    pub quick: bool,
    pub sync_writes: bool,
    /// `None` with `--no-postgres`.
    pub postgres: Option<PgInfo>,
    pub cpus: usize,
    pub cpu_model: String,
    pub rows: Vec<Comparison>,
}

/// The targets, shown for context (not asserted): scenario, the ratio compared
/// (KalamDB / PostgreSQL), and the bound it should stay at or below.
const TARGETS: &[(&str, &str, f64)] = &[
    ("live-latency", "p99", 0.5),
    ("live-fanout-10k", "p99", 0.5),
    ("insert-seq", "p99", 1.5),
];

impl Report {
    pub fn durability(&self) -> String {
        let kalamdb = if self.sync_writes {
            "KalamDB sync_writes = true (WAL fsynced on every write)"
        } else {
            "KalamDB sync_writes = false (WAL written, no fsync per write)"
        };
        match &self.postgres {
            Some(pg) => format!(
                "{kalamdb}; PostgreSQL {}: synchronous_commit = {}, fsync = {}",
                pg.version, pg.synchronous_commit, pg.fsync
            ),
            None => format!("{kalamdb}; PostgreSQL not run (--no-postgres)"),
        }
    }

    pub fn print(&self) {
        let f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
        let t = |o: Option<&Outcome>| {
            o.map(|o| format!("{:.0}", o.rows_per_sec))
                .unwrap_or_else(|| "-".into())
        };
        let r = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
        println!(
            "kalam-bench: {} sizes, {} CPUs ({})",
            if self.quick { "--quick" } else { "full" },
            self.cpus,
            self.cpu_model
        );
        println!("durability: {}", self.durability());
        println!(
            "ratios are KalamDB / PostgreSQL: a p99 ratio below 1 and a rows/s ratio above 1 favour KalamDB"
        );
        println!();
        println!(
            "{:<18} | {:>9} {:>9} {:>11} | {:>9} {:>9} {:>11} | {:>9} {:>11}",
            "", "KalamDB", "", "", "PostgreSQL", "", "", "ratio", ""
        );
        println!(
            "{:<18} | {:>9} {:>9} {:>11} | {:>9} {:>9} {:>11} | {:>9} {:>11}",
            "scenario", "p50 ms", "p99 ms", "rows/s", "p50 ms", "p99 ms", "rows/s", "p99", "rows/s"
        );
        for c in &self.rows {
            let (k, p) = (c.kalamdb.as_ref(), c.postgres.as_ref());
            println!(
                "{:<18} | {:>9} {:>9} {:>11} | {:>9} {:>9} {:>11} | {:>9} {:>11}",
                c.scenario,
                f(k.and_then(|o| o.p50_ms)),
                f(k.and_then(|o| o.p99_ms)),
                t(k),
                f(p.and_then(|o| o.p50_ms)),
                f(p.and_then(|o| o.p99_ms)),
                t(p),
                r(c.p99_ratio()),
                r(c.throughput_ratio()),
            );
        }
        println!();
        println!("notes:");
        for c in &self.rows {
            for (system, outcome) in [("KalamDB", &c.kalamdb), ("PostgreSQL", &c.postgres)] {
                let Some(o) = outcome else { continue };
                println!("  {} [{system}] {}", c.scenario, o.notes());
                if let Some(method) = &o.method {
                    println!("      {method}");
                }
            }
            if c.postgres.is_none() && self.postgres.is_some() {
                println!("  {} [PostgreSQL] - (KalamDB only)", c.scenario);
            }
        }
        if self.postgres.is_some() {
            println!();
            println!(
                "targets of the issue (context, not asserted{}):",
                if self.quick {
                    "; --quick numbers mean nothing"
                } else {
                    ""
                }
            );
            for (scenario, ratio, bound) in TARGETS {
                let got = self
                    .rows
                    .iter()
                    .find(|c| c.scenario == *scenario)
                    .and_then(Comparison::p99_ratio);
                let verdict = match got {
                    Some(x) if x <= *bound => format!("{x:.2}: met"),
                    Some(x) => format!("{x:.2}: not met"),
                    None => "not measured".into(),
                };
                println!("  {scenario}: {ratio} ratio <= {bound} -> {verdict}");
            }
        }
        let passed: usize = self
            .rows
            .iter()
            .map(|c| c.kalamdb.is_some() as usize + c.postgres.is_some() as usize)
            .sum();
        println!();
        println!("{passed} passed, 0 failed");
    }

    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|c| {
                json!({
                    "scenario": c.scenario,
                    "kalamdb": c.kalamdb,
                    "postgres": c.postgres,
                    "ratio_p99": c.p99_ratio(),
                    "ratio_rows_per_sec": c.throughput_ratio(),
                })
            })
            .collect();
        json!({
            "mode": if self.quick { "quick" } else { "full" },
            "machine": { "cpus": self.cpus, "cpu_model": self.cpu_model },
            "durability": {
                "text": self.durability(),
                "kalamdb_sync_writes": self.sync_writes,
                "postgres_synchronous_commit": self.postgres.as_ref().map(|p| p.synchronous_commit.clone()),
                "postgres_fsync": self.postgres.as_ref().map(|p| p.fsync.clone()),
            },
            "postgres": self.postgres.as_ref().map(|p| json!({
                "version": p.version,
                "max_connections": p.max_connections,
            })),
            "results": rows,
        })
    }

    /// Checks, before any scenario runs, that `path`'s directory exists, so that a typo
    /// does not lose the numbers of a whole run at its end.
    pub fn check_json_path(path: &Path) -> Result<()> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            bail!(
                "--json {}: the directory {} does not exist",
                path.display(),
                dir.display()
            );
        }
        if path.is_dir() {
            bail!("--json {}: a directory, not a file", path.display());
        }
        Ok(())
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(&self.to_json())?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::hist;

    #[test]
    fn a_json_path_in_a_missing_directory_is_refused_before_the_run() {
        let dir = std::env::temp_dir();
        assert!(Report::check_json_path(&dir.join("run.json")).is_ok());
        assert!(Report::check_json_path(Path::new("run.json")).is_ok());
        let missing = dir.join("kalam-bench-no-such-dir").join("run.json");
        let err = Report::check_json_path(&missing).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        let err = Report::check_json_path(&dir).unwrap_err().to_string();
        assert!(err.contains("a directory"), "{err}");
    }

    fn outcome(scenario: &'static str, p99_us: u64, rows: usize) -> Outcome {
        let mut h = hist();
        h.record(p99_us).unwrap();
        Outcome::new(scenario, 1, rows, 1.0, &h, None)
    }

    #[test]
    fn outcomes_pair_up_in_table_order_with_ratios() {
        let rows = compare(
            vec![outcome("flush", 1000, 10), outcome("insert-seq", 1000, 100)],
            vec![outcome("insert-seq", 2000, 50)],
        );
        assert_eq!(rows[0].scenario, "insert-seq");
        assert_eq!(rows[1].scenario, "flush");
        assert!(rows[1].postgres.is_none());
        let p99 = rows[0].p99_ratio().unwrap();
        assert!((p99 - 0.5).abs() < 0.01, "{p99}");
        assert!((rows[0].throughput_ratio().unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(rows[1].p99_ratio(), None);
    }
}
