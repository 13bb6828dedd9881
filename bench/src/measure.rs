//! What the scenarios of both systems share: histograms and percentiles, timed loops,
//! paced background noise, per-round delivery checks, payload checks, the row text of the
//! load, and progress lines. Each system's scenario module only says how to talk to its
//! system; the workload, the timing and the checks come from here.

use std::collections::HashSet;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::future::try_join_all;
use hdrhistogram::Histogram;
use kalam_client::wire::Row;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

/// How long one expected message may take (a debug node on a busy 2-core machine is slow).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a set of connections must stay silent when nothing more is expected.
pub const QUIET: Duration = Duration::from_millis(500);
/// How often a long loop reports how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Latencies in microseconds, 1 µs to 60 s (larger values are recorded as 60 s).
pub fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds")
}

/// The `q` quantile of a histogram of microseconds, in milliseconds.
pub fn ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
}

pub fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// A progress line on stderr (stdout carries the results).
pub fn progress(what: &str) {
    eprintln!("kalam-bench: {what}");
}

/// Prints `<label>: <done> of <total>` at most every [`PROGRESS_EVERY`].
pub struct Ticker {
    label: String,
    total: usize,
    last: Instant,
}

impl Ticker {
    pub fn new(label: impl Into<String>, total: usize) -> Self {
        Self {
            label: label.into(),
            total,
            last: Instant::now(),
        }
    }

    pub fn tick(&mut self, done: usize) {
        if self.last.elapsed() >= PROGRESS_EVERY {
            progress(&format!("{}: {done} of {}", self.label, self.total));
            self.last = Instant::now();
        }
    }
}

/// Latencies of a timed loop: as the client saw them, and as the server reported them
/// (empty when the server reports none), with the loop's wall time.
pub struct Timed {
    pub client: Histogram<u64>,
    pub server: Histogram<u64>,
    pub seconds: f64,
}

/// Runs `op(0..n)` one after another, timing each from the call until its answer. `op`
/// returns the server's own execution time in ms when the system reports one.
pub async fn sequential<F, Fut>(
    label: &str,
    n: usize,
    show_progress: bool,
    mut op: F,
) -> Result<Timed>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<Option<f64>>>,
{
    let (mut client, mut server) = (hist(), hist());
    let mut ticker = Ticker::new(label, n);
    let started = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let server_ms = op(i)
            .await
            .with_context(|| format!("{label}: operation {i}"))?;
        client.saturating_record(micros(t.elapsed()));
        if let Some(ms) = server_ms {
            server.saturating_record((ms * 1000.0) as u64);
        }
        if show_progress {
            ticker.tick(i + 1);
        }
    }
    Ok(Timed {
        client,
        server,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Runs concurrent writers (each a task returning its own latencies, typically built with
/// [`sequential`]) and merges their histograms; the time runs from the spawn of the first
/// to the end of the last.
pub async fn concurrent<Fut>(writers: Vec<Fut>) -> Result<(Histogram<u64>, f64)>
where
    Fut: Future<Output = Result<Histogram<u64>>> + Send + 'static,
{
    let started = Instant::now();
    let tasks = writers.into_iter().map(tokio::spawn);
    let results = try_join_all(tasks)
        .await
        .context("a writer task panicked")?;
    let seconds = started.elapsed().as_secs_f64();
    let mut all = hist();
    for result in results {
        all.add(&result?)?;
    }
    Ok((all, seconds))
}

/// Calls `op(0, 1, ...)` at most `per_sec` times a second, one call at a time, until `stop`
/// turns true (or its sender is dropped); returns how many calls completed. A call in
/// flight when `stop` turns true is completed and counted.
pub async fn paced<F, Fut>(per_sec: u32, mut stop: watch::Receiver<bool>, mut op: F) -> Result<u64>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec.max(1) as f64));
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut done = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(done),
            _ = interval.tick() => {}
        }
        if *stop.borrow() {
            return Ok(done);
        }
        op(done)
            .await
            .with_context(|| format!("noise write {done}"))?;
        done += 1;
    }
}

/// Fails unless `row` has each of `expected`'s columns with exactly that value (other
/// columns, such as KalamDB's `_updated`, are not looked at).
pub fn check_fields(what: &str, row: &Row, expected: &[(&str, Value)]) -> Result<()> {
    for (column, value) in expected {
        match row.get(*column) {
            Some(v) if v == value => {}
            other => bail!("{what}: column {column} is {other:?}, expected {value} (row {row:?})"),
        }
    }
    Ok(())
}

/// Fails unless `got == expected`.
pub fn check_count(what: &str, got: u64, expected: usize) -> Result<()> {
    if got != expected as u64 {
        bail!("{what}: {got}, expected {expected}");
    }
    Ok(())
}

/// The rows the filtered SELECT of `select-user` must return: ids `i` with `i % 10 == 3`
/// out of `0..rows_per_user`, each once.
pub fn check_conversation_ids(what: &str, mut ids: Vec<i64>, rows_per_user: usize) -> Result<()> {
    ids.sort_unstable();
    let expected: Vec<i64> = (0..rows_per_user as i64).filter(|i| i % 10 == 3).collect();
    if ids != expected {
        bail!(
            "{what}: {} rows with ids {:?}..., expected {} rows with ids {:?}...",
            ids.len(),
            &ids[..ids.len().min(5)],
            expected.len(),
            &expected[..expected.len().min(5)]
        );
    }
    Ok(())
}

/// The deliveries of one change to `expected` subscribers: each must get it exactly once,
/// as one row with the expected columns. `K` names a subscriber.
pub struct Round<K> {
    what: String,
    expected: usize,
    sent: Instant,
    last: Instant,
    seen: HashSet<K>,
}

impl<K: Hash + Eq + Debug> Round<K> {
    /// `sent`: just before the write started.
    pub fn new(what: impl Into<String>, expected: usize, sent: Instant) -> Self {
        Self {
            what: what.into(),
            expected,
            sent,
            last: sent,
            seen: HashSet::with_capacity(expected),
        }
    }

    /// Records that `subscriber` received `rows` at `at`.
    pub fn deliver(
        &mut self,
        subscriber: K,
        at: Instant,
        rows: &[Row],
        expected: &[(&str, Value)],
    ) -> Result<()> {
        match rows {
            [row] => check_fields(&self.what, row, expected)?,
            _ => bail!(
                "{}: {} rows in one delivery, expected 1",
                self.what,
                rows.len()
            ),
        }
        if self.seen.len() >= self.expected {
            bail!("{}: more than {} deliveries", self.what, self.expected);
        }
        self.last = self.last.max(at);
        if !self.seen.insert(subscriber) {
            bail!("{}: delivered twice to one subscriber", self.what);
        }
        Ok(())
    }

    pub fn delivered(&self) -> usize {
        self.seen.len()
    }

    pub fn complete(&self) -> bool {
        self.seen.len() == self.expected
    }

    /// From the start of the write until the last subscriber had it.
    pub fn latency(&self) -> Duration {
        self.last.duration_since(self.sent)
    }
}

/// `rows` SQL value tuples for ids `start..start + rows`: `('message <i>')` with
/// `content_only`, else `(<i>, 'conversation <i % 10>', 'message <i>')`; with `user`, each
/// tuple starts with that user id (PostgreSQL has no per-user partitions, so the user is a
/// column there).
pub fn values(user: Option<&str>, start: usize, rows: usize, content_only: bool) -> String {
    let user = user.map(|u| format!("'{u}', ")).unwrap_or_default();
    (start..start + rows)
        .map(|i| {
            if content_only {
                format!("({user}'message {i}')")
            } else {
                format!("({user}{i}, 'conversation {}', 'message {i}')", i % 10)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Incompressible-looking text (xorshift64 over a 64-letter alphabet, about as compressible
/// as base64 of random bytes), deterministic for a seed.
pub struct RandomText(u64);

impl RandomText {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn text(&mut self, len: usize) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        (0..len)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                ALPHABET[(self.0 >> 58) as usize] as char
            })
            .collect()
    }
}

/// A directory removed on drop (kept tiny to avoid another dependency).
pub struct TempDir(pub std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_render_both_shapes() {
        assert_eq!(values(None, 3, 2, true), "('message 3'), ('message 4')");
        assert_eq!(
            values(Some("u1"), 13, 1, false),
            "('u1', 13, 'conversation 3', 'message 13')"
        );
    }

    #[test]
    fn a_round_refuses_duplicates_extras_and_wrong_payloads() {
        let sent = Instant::now();
        let mut round = Round::new("r", 2, sent);
        let row: Row = serde_json::from_value(json!({"id": 7, "room": "r1"})).unwrap();
        let expected = [("id", json!(7)), ("room", json!("r1"))];
        round
            .deliver(1, sent, std::slice::from_ref(&row), &expected)
            .unwrap();
        assert!(round
            .deliver(1, sent, std::slice::from_ref(&row), &expected)
            .is_err());
        assert!(round
            .deliver(2, sent, std::slice::from_ref(&row), &[("id", json!(8))])
            .is_err());
        round
            .deliver(2, sent, std::slice::from_ref(&row), &expected)
            .unwrap();
        assert!(round.complete());
        assert!(round
            .deliver(3, sent, std::slice::from_ref(&row), &expected)
            .is_err());
    }

    #[test]
    fn conversation_ids_are_checked_exactly() {
        check_conversation_ids("s", vec![13, 3, 23], 30).unwrap();
        assert!(check_conversation_ids("s", vec![3, 13], 30).is_err());
        assert!(check_conversation_ids("s", vec![3, 13, 13], 20).is_err());
    }

    #[test]
    fn random_text_uses_the_alphabet_and_varies() {
        let mut r = RandomText::new(42);
        let a = r.text(64);
        let b = r.text(64);
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }
}
