//! Prometheus metrics of the operator, served at `GET /metrics`: reconciles, failures by kind
//! and reconcile duration, per controller.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "kalam_operator_reconciles_total",
                "Reconciles run, by controller",
            ),
            &["controller"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "kalam_operator_reconcile_errors_total",
                "Reconciles that failed, by controller and kind of error",
            ),
            &["controller", "error"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "kalam_operator_reconcile_duration_seconds",
                "Time one reconcile took, by controller",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["controller"],
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Metrics {
            registry,
            reconciles,
            failures,
            duration,
        })
    }

    /// Records one finished reconcile; `error` is the error's metric label when it failed.
    pub fn reconciled(&self, controller: &str, seconds: f64, error: Option<&str>) {
        self.reconciles.with_label_values(&[controller]).inc();
        self.duration
            .with_label_values(&[controller])
            .observe(seconds);
        if let Some(kind) = error {
            self.failures.with_label_values(&[controller, kind]).inc();
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_errors_and_durations_are_exposed() {
        let m = Metrics::new().unwrap();
        m.reconciled("namespace", 0.02, None);
        m.reconciled("namespace", 0.5, Some("sql"));
        let text = m.render();
        assert!(
            text.contains("kalam_operator_reconciles_total{controller=\"namespace\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "kalam_operator_reconcile_errors_total{controller=\"namespace\",error=\"sql\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "kalam_operator_reconcile_duration_seconds_count{controller=\"namespace\"} 2"
            ),
            "{text}"
        );
    }
}
