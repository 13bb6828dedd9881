//! Prometheus metrics users graph: statement rates and latencies by kind and outcome, HTTP
//! requests by route and status, flush jobs with the rows and bytes they wrote, STREAM events
//! evicted. Served at `GET /metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub statements: IntCounterVec,
    pub statement_seconds: HistogramVec,
    pub http_requests: IntCounterVec,
    pub http_seconds: HistogramVec,
    pub flush_jobs: IntCounterVec,
    pub flush_rows: IntCounter,
    pub flush_bytes: IntCounter,
    pub flush_seconds: Histogram,
    /// STREAM table events evicted, by reason: `retention` (the eviction scheduler) or
    /// `max_buffer` (at INSERT).
    pub stream_evicted: IntCounterVec,
}

/// Buckets from 50µs to 10s: single-row writes live at the bottom, scans at the top.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let statements = IntCounterVec::new(
            Opts::new(
                "kalamdb_sql_statements_total",
                "SQL statements executed, by kind and status",
            ),
            &["kind", "status"],
        )?;
        let statement_seconds = HistogramVec::new(
            HistogramOpts::new(
                "kalamdb_sql_statement_duration_seconds",
                "Server-side time per SQL statement",
            )
            .buckets(BUCKETS.to_vec()),
            &["kind"],
        )?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "kalamdb_http_requests_total",
                "HTTP requests, by route and status code",
            ),
            &["route", "status"],
        )?;
        let http_seconds = HistogramVec::new(
            HistogramOpts::new(
                "kalamdb_http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(BUCKETS.to_vec()),
            &["route"],
        )?;
        let flush_jobs = IntCounterVec::new(
            Opts::new(
                "kalamdb_flush_jobs_total",
                "Flush jobs finished, by status (completed, failed)",
            ),
            &["status"],
        )?;
        let flush_rows = IntCounter::new(
            "kalamdb_flush_rows_total",
            "Row versions written to Parquet by flushes",
        )?;
        let flush_bytes = IntCounter::new(
            "kalamdb_flush_bytes_total",
            "Bytes of Parquet written by flushes",
        )?;
        let flush_seconds = Histogram::with_opts(
            HistogramOpts::new("kalamdb_flush_duration_seconds", "Duration of flush jobs").buckets(
                vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0],
            ),
        )?;
        let stream_evicted = IntCounterVec::new(
            Opts::new(
                "kalamdb_stream_events_evicted_total",
                "STREAM table events evicted, by reason (retention, max_buffer)",
            ),
            &["reason"],
        )?;
        // The scheduler's series exists from the start, at 0, so rates work before the first
        // eviction. (`max_buffer` evictions happen inside `TableStore::insert`, which has no
        // metrics handle: that series appears once something records it.)
        let _ = stream_evicted.with_label_values(&["retention"]);
        registry.register(Box::new(stream_evicted.clone()))?;
        registry.register(Box::new(flush_jobs.clone()))?;
        registry.register(Box::new(flush_rows.clone()))?;
        registry.register(Box::new(flush_bytes.clone()))?;
        registry.register(Box::new(flush_seconds.clone()))?;
        registry.register(Box::new(statements.clone()))?;
        registry.register(Box::new(statement_seconds.clone()))?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_seconds.clone()))?;
        Ok(Self {
            registry,
            statements,
            statement_seconds,
            http_requests,
            http_seconds,
            flush_jobs,
            flush_rows,
            flush_bytes,
            flush_seconds,
            stream_evicted,
        })
    }

    /// Counts STREAM events evicted for `reason` (`retention` or `max_buffer`).
    pub fn record_stream_eviction(&self, reason: &str, events: u64) {
        if events > 0 {
            self.stream_evicted
                .with_label_values(&[reason])
                .inc_by(events);
        }
    }

    pub fn statement(&self, kind: &str, ok: bool, seconds: f64) {
        self.statements
            .with_label_values(&[kind, if ok { "ok" } else { "error" }])
            .inc();
        self.statement_seconds
            .with_label_values(&[kind])
            .observe(seconds);
    }

    /// Records a finished flush job (rows and bytes of a failed one count what it wrote).
    pub fn flush(&self, ok: bool, rows: u64, bytes: u64, seconds: f64) {
        self.flush_jobs
            .with_label_values(&[if ok { "completed" } else { "failed" }])
            .inc();
        self.flush_rows.inc_by(rows);
        self.flush_bytes.inc_by(bytes);
        self.flush_seconds.observe(seconds);
    }

    /// Adds metrics owned by another room (the live-query hub keeps its own gauges).
    pub fn register(
        &self,
        collectors: Vec<Box<dyn prometheus::core::Collector>>,
    ) -> Result<(), prometheus::Error> {
        for c in collectors {
            self.registry.register(c)?;
        }
        Ok(())
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
