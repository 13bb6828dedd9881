//! The result of one scenario on one system ([`Outcome`]), and the report of a run: one
//! table with both systems side by side and their ratio, notes on what each number
//! measured, and the same as JSON. A run of several rounds (`--rounds N`) prints each
//! round's table as it ends and then their medians, with how many rounds met each target.

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
    /// The node measured: its path and `--version` line (which names a debug build).
    pub kalamdb: String,
    pub sync_writes: bool,
    /// `None` with `--no-postgres`.
    pub postgres: Option<PgInfo>,
    pub cpus: usize,
    pub cpu_model: String,
    /// Every round's scenarios, both systems side by side; at least one round.
    pub rounds: Vec<Vec<Comparison>>,
}

/// The middle value (the mean of the two middle ones for an even count); `None` when empty.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// One scenario over all rounds: the median of each number and of each round's ratios.
/// A ratio of medians would pair one round's KalamDB with another round's PostgreSQL; the
/// median of the rounds' ratios compares the two systems as measured minutes apart.
#[derive(Debug, PartialEq)]
pub struct Summary {
    pub scenario: &'static str,
    pub rounds: usize,
    pub kalamdb: Option<Numbers>,
    pub postgres: Option<Numbers>,
    pub p99_ratios: Vec<f64>,
    pub throughput_ratios: Vec<f64>,
}

/// One system's numbers in one scenario: one round's, or the medians over the rounds that
/// measured it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Numbers {
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub rows_per_sec: f64,
}

impl Numbers {
    fn of<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> Option<Self> {
        let outcomes: Vec<&Outcome> = outcomes.collect();
        let rows_per_sec = median(outcomes.iter().map(|o| o.rows_per_sec).collect())?;
        Some(Self {
            p50_ms: median(outcomes.iter().filter_map(|o| o.p50_ms).collect()),
            p99_ms: median(outcomes.iter().filter_map(|o| o.p99_ms).collect()),
            rows_per_sec,
        })
    }
}

impl Summary {
    pub fn p99_ratio(&self) -> Option<f64> {
        median(self.p99_ratios.clone())
    }

    pub fn throughput_ratio(&self) -> Option<f64> {
        median(self.throughput_ratios.clone())
    }
}

/// Per scenario (in the order of the first round), the medians over `rounds`.
pub fn summarize(rounds: &[Vec<Comparison>]) -> Vec<Summary> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    first
        .iter()
        .map(|c| {
            let same: Vec<&Comparison> = rounds
                .iter()
                .filter_map(|round| round.iter().find(|r| r.scenario == c.scenario))
                .collect();
            Summary {
                scenario: c.scenario,
                rounds: same.len(),
                kalamdb: Numbers::of(same.iter().filter_map(|r| r.kalamdb.as_ref())),
                postgres: Numbers::of(same.iter().filter_map(|r| r.postgres.as_ref())),
                p99_ratios: same.iter().filter_map(|r| r.p99_ratio()).collect(),
                throughput_ratios: same.iter().filter_map(|r| r.throughput_ratio()).collect(),
            }
        })
        .collect()
}

/// How one of the targets fared: the p99 ratio of every round that measured it.
#[derive(Debug, PartialEq)]
pub struct TargetOutcome {
    pub scenario: &'static str,
    pub ratio: &'static str,
    pub bound: f64,
    pub ratios: Vec<f64>,
}

impl TargetOutcome {
    pub fn met_in(&self) -> usize {
        self.ratios.iter().filter(|r| **r <= self.bound).count()
    }

    fn verdict(&self) -> String {
        let met = self.met_in();
        match self.ratios.as_slice() {
            [] => "not measured".into(),
            [x] if met == 1 => format!("{x:.2}: met"),
            [x] => format!("{x:.2}: not met"),
            all => format!(
                "met in {met} of {} rounds (median {:.2}; {})",
                all.len(),
                median(all.to_vec()).unwrap_or(f64::NAN),
                all.iter()
                    .map(|x| format!("{x:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
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
            "KalamDB sync_writes = false (WAL written on every write, no fsync: survives kill -9 \
             of the node)"
        };
        match &self.postgres {
            Some(pg) => format!(
                "{kalamdb}; PostgreSQL {}: synchronous_commit = {}, fsync = {}{}",
                pg.version,
                pg.synchronous_commit,
                pg.fsync,
                if pg.synchronous_commit == "off" {
                    " (a commit may wait up to 3 x wal_writer_delay in WAL buffers, which a \
                     crash of PostgreSQL loses)"
                } else {
                    ""
                }
            ),
            None => format!("{kalamdb}; PostgreSQL not run (--no-postgres)"),
        }
    }

    /// Each target with the ratio every round measured.
    pub fn targets(&self) -> Vec<TargetOutcome> {
        TARGETS
            .iter()
            .map(|(scenario, ratio, bound)| TargetOutcome {
                scenario,
                ratio,
                bound: *bound,
                ratios: self
                    .rounds
                    .iter()
                    .filter_map(|round| round.iter().find(|c| c.scenario == *scenario))
                    .filter_map(Comparison::p99_ratio)
                    .collect(),
            })
            .collect()
    }

    /// The checks that passed: one per scenario, system and round (a failed check ends
    /// the run before any report).
    fn passed(&self) -> usize {
        self.rounds
            .iter()
            .flatten()
            .map(|c| c.kalamdb.is_some() as usize + c.postgres.is_some() as usize)
            .sum()
    }

    /// The table of round `round` (from 1) of several, printed as soon as it ends; the
    /// first also prints the run's header.
    pub fn print_round(&self, round: usize) {
        let Some(rows) = self.rounds.get(round - 1) else {
            return;
        };
        if round == 1 {
            self.print_header();
            println!();
        }
        println!("round {round}:");
        print_table(rows.iter().map(Row::from));
        println!();
        print_notes(rows, self.postgres.is_some());
        println!();
    }

    fn print_header(&self) {
        println!(
            "kalam-bench: {} sizes, {} CPUs ({})",
            if self.quick { "--quick" } else { "full" },
            self.cpus,
            self.cpu_model
        );
        println!("kalamdb: {}", self.kalamdb);
        println!("durability: {}", self.durability());
        println!(
            "ratios are KalamDB / PostgreSQL: a p99 ratio below 1 and a rows/s ratio above 1 favour KalamDB"
        );
    }

    /// The report of the whole run: one round's table and notes, or the medians of several
    /// (their tables were printed as they ended), then the targets.
    pub fn print(&self) {
        let rounds = self.rounds.len();
        if rounds > 1 {
            println!(
                "medians over {rounds} rounds (each round's table is above); the ratio columns are \
                 the medians of each round's ratio"
            );
        } else {
            self.print_header();
        }
        println!();
        match self.rounds.as_slice() {
            [only] => {
                print_table(only.iter().map(Row::from));
                println!();
                print_notes(only, self.postgres.is_some());
            }
            all => print_table(summarize(all).iter().map(Row::from)),
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
            for target in self.targets() {
                println!(
                    "  {}: {} ratio <= {} -> {}",
                    target.scenario,
                    target.ratio,
                    target.bound,
                    target.verdict()
                );
            }
        }
        println!();
        println!("{} passed, 0 failed", self.passed());
    }

    pub fn to_json(&self) -> Value {
        let round_rows = |rows: &[Comparison]| -> Vec<Value> {
            rows.iter()
                .map(|c| {
                    json!({
                        "scenario": c.scenario,
                        "kalamdb": c.kalamdb,
                        "postgres": c.postgres,
                        "ratio_p99": c.p99_ratio(),
                        "ratio_rows_per_sec": c.throughput_ratio(),
                    })
                })
                .collect()
        };
        // `results` answers "what did this run measure" the same way for one round (its
        // outcomes) and for several (the medians, with every round under `rounds`).
        let results: Vec<Value> = match self.rounds.as_slice() {
            [only] => round_rows(only),
            all => summarize(all)
                .iter()
                .map(|s| {
                    json!({
                        "scenario": s.scenario,
                        "rounds": s.rounds,
                        "kalamdb": s.kalamdb,
                        "postgres": s.postgres,
                        "ratio_p99": s.p99_ratio(),
                        "ratio_rows_per_sec": s.throughput_ratio(),
                        "ratios_p99": s.p99_ratios,
                    })
                })
                .collect(),
        };
        let targets: Vec<Value> = self
            .targets()
            .iter()
            .map(|t| {
                json!({
                    "scenario": t.scenario,
                    "ratio": t.ratio,
                    "bound": t.bound,
                    "ratios": t.ratios,
                    "met_in": t.met_in(),
                    "rounds": t.ratios.len(),
                })
            })
            .collect();
        json!({
            "mode": if self.quick { "quick" } else { "full" },
            "machine": { "cpus": self.cpus, "cpu_model": self.cpu_model },
            "kalamdb": self.kalamdb,
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
            "results": results,
            "targets": targets,
            "rounds": self.rounds.iter().map(|r| round_rows(r)).collect::<Vec<_>>(),
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

    /// Round `round` failed (a check, or a server): the rounds before it are still worth
    /// having, so their table is printed and, to `json`, written; the error says where.
    pub fn keep_after_failure(
        &self,
        json: Option<&Path>,
        round: usize,
        error: anyhow::Error,
    ) -> anyhow::Error {
        if self.rounds.is_empty() {
            return error;
        }
        self.print();
        let kept = self.rounds.len();
        let written = match json {
            Some(path) => match self.write_json(path) {
                Ok(()) => format!(
                    "; the {kept} finished round(s) written to {}",
                    path.display()
                ),
                Err(e) => format!("; writing the {kept} finished round(s) failed too: {e:#}"),
            },
            None => String::new(),
        };
        error.context(format!("round {round} failed{written}"))
    }
}

/// One line of the table: a round's outcomes or the medians of several rounds.
struct Row<'a> {
    scenario: &'a str,
    kalamdb: Option<Numbers>,
    postgres: Option<Numbers>,
    p99_ratio: Option<f64>,
    throughput_ratio: Option<f64>,
}

impl<'a> From<&'a Comparison> for Row<'a> {
    fn from(c: &'a Comparison) -> Self {
        Row {
            scenario: c.scenario,
            kalamdb: Numbers::of(c.kalamdb.iter()),
            postgres: Numbers::of(c.postgres.iter()),
            p99_ratio: c.p99_ratio(),
            throughput_ratio: c.throughput_ratio(),
        }
    }
}

impl<'a> From<&'a Summary> for Row<'a> {
    fn from(s: &'a Summary) -> Self {
        Row {
            scenario: s.scenario,
            kalamdb: s.kalamdb.clone(),
            postgres: s.postgres.clone(),
            p99_ratio: s.p99_ratio(),
            throughput_ratio: s.throughput_ratio(),
        }
    }
}

fn print_table<'a>(rows: impl Iterator<Item = Row<'a>>) {
    let f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
    let t = |v: Option<f64>| v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into());
    let r = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
    println!(
        "{:<18} | {:>9} {:>9} {:>11} | {:>9} {:>9} {:>11} | {:>9} {:>11}",
        "", "KalamDB", "", "", "PostgreSQL", "", "", "ratio", ""
    );
    println!(
        "{:<18} | {:>9} {:>9} {:>11} | {:>9} {:>9} {:>11} | {:>9} {:>11}",
        "scenario", "p50 ms", "p99 ms", "rows/s", "p50 ms", "p99 ms", "rows/s", "p99", "rows/s"
    );
    for row in rows {
        let (k, p) = (row.kalamdb.as_ref(), row.postgres.as_ref());
        println!(
            "{:<18} | {:>9} {:>9} {:>11} | {:>9} {:>9} {:>11} | {:>9} {:>11}",
            row.scenario,
            f(k.and_then(|n| n.p50_ms)),
            f(k.and_then(|n| n.p99_ms)),
            t(k.map(|n| n.rows_per_sec)),
            f(p.and_then(|n| n.p50_ms)),
            f(p.and_then(|n| n.p99_ms)),
            t(p.map(|n| n.rows_per_sec)),
            r(row.p99_ratio),
            r(row.throughput_ratio),
        );
    }
}

/// What each number of a round measured; `with_postgres` marks KalamDB-only scenarios.
fn print_notes(rows: &[Comparison], with_postgres: bool) {
    println!("notes:");
    for c in rows {
        for (system, outcome) in [("KalamDB", &c.kalamdb), ("PostgreSQL", &c.postgres)] {
            let Some(o) = outcome else { continue };
            println!("  {} [{system}] {}", c.scenario, o.notes());
            if let Some(method) = &o.method {
                println!("      {method}");
            }
        }
        if c.postgres.is_none() && with_postgres {
            println!("  {} [PostgreSQL] - (KalamDB only)", c.scenario);
        }
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

    #[test]
    fn a_failed_round_keeps_the_rounds_before_it_in_the_json() {
        let path =
            std::env::temp_dir().join(format!("kalam-bench-kept-{}.json", std::process::id()));
        let mut report = Report {
            quick: true,
            kalamdb: "target/release/kalamdb (kalamdb 0.1.0)".into(),
            sync_writes: false,
            postgres: None,
            cpus: 2,
            cpu_model: "test".into(),
            rounds: Vec::new(),
        };
        let err = report.keep_after_failure(Some(&path), 1, anyhow::anyhow!("check failed"));
        assert_eq!(
            format!("{err:#}"),
            "check failed",
            "nothing to keep in round 1"
        );
        assert!(!path.exists());

        report.rounds.push(compare(
            vec![outcome("insert-seq", 1000, 100)],
            vec![outcome("insert-seq", 2000, 50)],
        ));
        let err = report.keep_after_failure(Some(&path), 2, anyhow::anyhow!("check failed"));
        let message = format!("{err:#}");
        assert!(
            message.starts_with("round 2 failed; the 1 finished round(s) written to")
                && message.ends_with(": check failed"),
            "{message}"
        );
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(written, report.to_json());
        assert!(written.to_string().contains("insert-seq"), "{written}");
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

    #[test]
    fn medians_take_the_middle_or_the_mean_of_the_two_middle_values() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0]), Some(3.0));
        assert_eq!(median(vec![5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    /// Three rounds of insert-seq with KalamDB p99 1, 3, 2 ms against PostgreSQL 1, 1, 4 ms:
    /// per-round ratios 1.0, 3.0, 0.5.
    fn three_rounds() -> Report {
        let round = |k: u64, p: u64| {
            compare(
                vec![
                    outcome("insert-seq", k * 1000, 100),
                    outcome("flush", 500, 10),
                ],
                vec![outcome("insert-seq", p * 1000, 100)],
            )
        };
        Report {
            quick: false,
            kalamdb: "target/release/kalamdb (kalamdb 0.1.0)".into(),
            sync_writes: false,
            postgres: Some(PgInfo {
                version: "15".into(),
                synchronous_commit: "off".into(),
                fsync: "on".into(),
                max_connections: "1100".into(),
            }),
            cpus: 2,
            cpu_model: "test".into(),
            rounds: vec![round(1, 1), round(3, 1), round(2, 4)],
        }
    }

    #[test]
    fn rounds_summarize_as_medians_of_each_number_and_of_each_rounds_ratio() {
        let report = three_rounds();
        let summary = summarize(&report.rounds);
        assert_eq!(summary.len(), 2);
        let seq = &summary[0];
        assert_eq!((seq.scenario, seq.rounds), ("insert-seq", 3));
        let near = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 0.01);
        assert!(near(seq.kalamdb.as_ref().unwrap().p99_ms, 2.0), "{seq:?}");
        assert!(near(seq.postgres.as_ref().unwrap().p99_ms, 1.0), "{seq:?}");
        // The median of 1.0, 3.0 and 0.5, not the ratio of the medians (2.0).
        assert!(near(seq.p99_ratio(), 1.0), "{seq:?}");
        assert_eq!(summary[1].scenario, "flush");
        assert!(summary[1].postgres.is_none());
        assert_eq!(summary[1].p99_ratio(), None);
    }

    #[test]
    fn targets_count_the_rounds_that_met_them() {
        let report = three_rounds();
        let targets = report.targets();
        let seq = targets.iter().find(|t| t.scenario == "insert-seq").unwrap();
        assert_eq!(seq.ratios.len(), 3);
        assert_eq!(seq.met_in(), 2, "1.0 and 0.5 are within 1.5, 3.0 is not");
        assert!(
            seq.verdict()
                .starts_with("met in 2 of 3 rounds (median 1.00"),
            "{}",
            seq.verdict()
        );
        let live = targets
            .iter()
            .find(|t| t.scenario == "live-latency")
            .unwrap();
        assert_eq!(live.verdict(), "not measured");

        let json = report.to_json();
        assert_eq!(json["kalamdb"], "target/release/kalamdb (kalamdb 0.1.0)");
        let durability = json["durability"]["text"].as_str().unwrap();
        assert!(
            durability.contains("synchronous_commit = off")
                && durability.contains("a crash of PostgreSQL loses"),
            "{durability}"
        );
        assert_eq!(json["rounds"].as_array().unwrap().len(), 3);
        assert_eq!(json["results"][0]["scenario"], "insert-seq");
        assert!((json["results"][0]["ratio_p99"].as_f64().unwrap() - 1.0).abs() < 0.01);
        let seq_target = &json["targets"][2];
        assert_eq!(seq_target["scenario"], "insert-seq");
        assert_eq!(seq_target["met_in"], 2);
        assert_eq!(seq_target["rounds"], 3);
    }

    #[test]
    fn one_round_reports_its_own_outcomes() {
        let mut report = three_rounds();
        report.rounds.truncate(1);
        let json = report.to_json();
        assert_eq!(json["results"][0]["kalamdb"]["operations"], 1);
        assert_eq!(json["targets"][2]["met_in"], 1);
        let seq = report
            .targets()
            .into_iter()
            .find(|t| t.scenario == "insert-seq")
            .unwrap();
        assert_eq!(seq.verdict(), "1.00: met");
    }
}
