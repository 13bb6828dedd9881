//! What every reconcile shares: the Kubernetes client, the event recorder, the metrics, where
//! to reach each cluster's nodes, the pooled SQL clients and the failure counts that drive
//! the retry backoff.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kalam_client::KalamClient;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, Recorder, Reporter};
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use tracing::Instrument;

use crate::crd::KalamCluster;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Name of the operator: field manager of every apply, reporter of its Events.
pub const MANAGER: &str = "kalam-operator";
/// Port of the node's HTTP API in the pods.
pub const NODE_PORT: u16 = 8080;

/// First retry of a failed reconcile; doubles per consecutive failure ...
const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// ... up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// `--endpoint-override <k8s-namespace>/<cluster>=<url>`: the SQL endpoint used for one
/// cluster instead of the per-pod DNS names. Test-only: it lets the operator reach a node
/// that does not run in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointOverride {
    pub namespace: String,
    pub cluster: String,
    pub url: String,
}

impl std::str::FromStr for EndpointOverride {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let shape = || format!("'{s}' is not <k8s-namespace>/<cluster>=<url>");
        let (target, url) = s.split_once('=').ok_or_else(shape)?;
        let (namespace, cluster) = target.split_once('/').ok_or_else(shape)?;
        let (namespace, cluster, url) = (namespace.trim(), cluster.trim(), url.trim());
        if namespace.is_empty() || cluster.is_empty() || url.is_empty() {
            return Err(shape());
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("'{url}' must start with http:// or https://"));
        }
        Ok(EndpointOverride {
            namespace: namespace.to_string(),
            cluster: cluster.to_string(),
            url: url.trim_end_matches('/').to_string(),
        })
    }
}

/// Per-pod base URLs of a cluster: `http://<c>-<i>.<c>-headless.<ns>.svc:8080`. Every pod is
/// an independent node, so database objects are applied to each of them.
pub fn pod_endpoints(cluster: &str, namespace: &str, replicas: i32) -> Vec<String> {
    (0..replicas.max(0))
        .map(|i| format!("http://{cluster}-{i}.{cluster}-headless.{namespace}.svc:{NODE_PORT}"))
        .collect()
}

/// The client Service URL published in the cluster status.
pub fn service_endpoint(cluster: &str, namespace: &str) -> String {
    format!("http://{cluster}.{namespace}.svc:{NODE_PORT}")
}

/// Delay before retry number `failures` (1 = the first failure).
pub fn backoff_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_MAX)
}

/// Shared state of the controllers.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Drift correction period of every resource ([`crate::dbobject::RESYNC`] by default).
    pub resync: Duration,
    overrides: HashMap<(String, String), String>,
    sql_clients: Mutex<HashMap<String, KalamClient>>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// `instance` names this replica of the operator in its Events; `resync` is the drift
    /// correction period.
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        overrides: Vec<EndpointOverride>,
        instance: Option<String>,
        resync: Duration,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: MANAGER.to_string(),
            instance,
        };
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            resync,
            overrides: overrides
                .into_iter()
                .map(|o| ((o.namespace, o.cluster), o.url))
                .collect(),
            sql_clients: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Where to send SQL for `cluster`: the override when one is set, else every pod.
    pub fn endpoints(&self, cluster: &KalamCluster) -> Vec<String> {
        let name = cluster.name_any();
        let namespace = cluster.namespace().unwrap_or_default();
        match self.overrides.get(&(namespace.clone(), name.clone())) {
            Some(url) => vec![url.clone()],
            None => pod_endpoints(&name, &namespace, cluster.spec.replicas),
        }
    }

    /// A SQL client of `endpoint` sending `token`; clients are pooled per endpoint, so
    /// resyncs reuse connections.
    pub fn sql_client(&self, endpoint: &str, token: &str) -> Result<KalamClient> {
        let mut pool = self.sql_clients.lock();
        let base = match pool.get(endpoint) {
            Some(c) => c.clone(),
            None => {
                let c = KalamClient::new(endpoint).map_err(|source| Error::Sql {
                    endpoint: endpoint.to_string(),
                    source,
                })?;
                pool.insert(endpoint.to_string(), c.clone());
                c
            }
        };
        Ok(base.with_token(token))
    }

    /// Publishes an Event about `regarding`. Events are best effort: a failure is logged,
    /// never fails the reconcile.
    pub async fn publish(&self, event: Event, regarding: &ObjectReference) {
        if let Err(e) = self.recorder.publish(&event, regarding).await {
            tracing::warn!(error = %e, reason = %event.reason, "publishing an Event failed");
        }
    }

    /// Counts one more consecutive failure of `key` and returns the count.
    pub fn record_failure(&self, key: &str) -> u32 {
        let mut failures = self.failures.lock();
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn clear_failures(&self, key: &str) {
        self.failures.lock().remove(key);
    }

    /// Runs one reconcile of `key` inside a tracing span, recording its duration, outcome
    /// and the failure streak used by [`Context::retry_after`].
    pub async fn measured<F>(
        &self,
        controller: &'static str,
        key: String,
        work: F,
    ) -> Result<Action>
    where
        F: Future<Output = Result<Action>>,
    {
        let span = tracing::info_span!("reconcile", controller, object = %key);
        let started = Instant::now();
        let result = work.instrument(span.clone()).await;
        let seconds = started.elapsed().as_secs_f64();
        span.in_scope(|| match &result {
            Ok(action) => {
                self.clear_failures(&key);
                tracing::debug!(?action, seconds, "reconciled");
                self.metrics.reconciled(controller, seconds, None);
            }
            Err(e) => {
                tracing::warn!(error = %e, seconds, "reconcile failed");
                self.metrics
                    .reconciled(controller, seconds, Some(e.metric_label()));
            }
        });
        result
    }

    /// The `error_policy` of every controller: retry with exponential backoff per object.
    pub fn retry_after(&self, key: &str, error: &Error) -> Action {
        let failures = self.record_failure(key);
        let delay = backoff_delay(failures);
        tracing::info!(object = %key, failures, delay_s = delay.as_secs(), error = %error, "retrying");
        Action::requeue(delay)
    }
}

/// `<kind>/<namespace>/<name>`: the key of failure counts and log lines.
pub fn object_key<K: kube::Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse() {
        let o: EndpointOverride = "default/kc=http://127.0.0.1:4000/".parse().unwrap();
        assert_eq!(
            o,
            EndpointOverride {
                namespace: "default".into(),
                cluster: "kc".into(),
                url: "http://127.0.0.1:4000".into()
            }
        );
        for bad in [
            "kc=http://x",
            "default/kc",
            "/kc=http://x",
            "default/=http://x",
            "a/b=ftp://x",
        ] {
            assert!(bad.parse::<EndpointOverride>().is_err(), "{bad}");
        }
    }

    #[test]
    fn pod_endpoints_name_every_pod() {
        assert_eq!(
            pod_endpoints("kc", "db", 2),
            vec![
                "http://kc-0.kc-headless.db.svc:8080".to_string(),
                "http://kc-1.kc-headless.db.svc:8080".to_string()
            ]
        );
        assert!(pod_endpoints("kc", "db", 0).is_empty());
        assert_eq!(service_endpoint("kc", "db"), "http://kc.db.svc:8080");
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff_delay(1), Duration::from_secs(5));
        assert_eq!(backoff_delay(2), Duration::from_secs(10));
        assert_eq!(backoff_delay(4), Duration::from_secs(40));
        assert_eq!(backoff_delay(7), Duration::from_secs(300));
        assert_eq!(backoff_delay(1000), Duration::from_secs(300));
        assert_eq!(backoff_delay(0), Duration::from_secs(5));
    }
}
