//! Server settings: defaults, then `server.toml`, then `KALAMDB_*` environment variables,
//! then command-line flags. Every field is documented in `docs/configuration.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP server binds (`/api/sql`, `/ws`, health, metrics).
    pub listen: SocketAddr,
    /// Where RocksDB, the catalog and the generated JWT secret live.
    pub data_dir: PathBuf,
    /// This node's name in `system.jobs`, `system.live_queries` and snowflake ids.
    pub node_id: String,
    /// HS256 secret for tokens. When unset, a random one is generated in
    /// `<data_dir>/jwt_secret` (mode 0600) on first start.
    pub jwt_secret: Option<Secret>,
    /// fsync the RocksDB WAL on every write: survives power loss, not only a process crash.
    pub sync_writes: bool,
    /// Largest `/api/sql` body accepted; larger ones get 413.
    pub max_request_bytes: usize,
    /// Largest result set returned; larger ones are refused with RESULT_TOO_LARGE, never cut.
    pub max_result_rows: usize,
    /// Memory all running queries may use together (sorts, joins, aggregations); a query
    /// needing more fails with RESOURCES_EXHAUSTED.
    pub max_query_memory_bytes: usize,
    /// Origins allowed by CORS; `["*"]` allows any.
    pub cors_allowed_origins: Vec<String>,
    /// `text` for people, `json` for log pipelines.
    pub log_format: LogFormat,
    /// A `tracing` filter such as `info` or `kalam_dbnode=debug,info`.
    pub log_level: String,
    /// Memory shared by all tables' RocksDB memtables (one column family per table).
    pub rocksdb_write_buffer_bytes: usize,
    /// Most files RocksDB keeps open at once.
    pub rocksdb_max_open_files: i32,
    /// Memory for hot partitions kept decoded (as Arrow) between scans; 0 turns it off.
    pub hot_cache_bytes: usize,
    /// Memory for the footers and page indexes of Parquet files queries opened; 0 turns it
    /// off.
    pub cold_metadata_cache_bytes: usize,
    /// A scan reads a partition's Parquet files whole into memory, instead of planning a
    /// file scan, when together they are at most this many bytes (and share no key with each
    /// other or the hot rows); 0 always plans the file scan.
    pub cold_read_in_memory_bytes: u64,
    /// Memory for the decoded rows of files read whole (`cold_read_in_memory_bytes`), kept
    /// for the next read of the same files; 0 turns it off.
    pub cold_decoded_cache_bytes: usize,
    /// Root of the built-in `local` storage location (Parquet files); default
    /// `<data_dir>/storage`.
    pub storage_dir: Option<PathBuf>,
    /// Where credential sets of storage locations live (`<dir>/<ref>/access_key_id`, ...);
    /// default `<data_dir>/credentials`.
    pub credentials_dir: Option<PathBuf>,
    /// The storage location of USER and SHARED tables created without `LOCATION`: the name
    /// of a row of `system.storage_locations`, resolved at CREATE time as `LOCATION
    /// REFERENCE '<name>'` would be. Unset (or `local`): the built-in `local` location.
    pub default_location: Option<String>,
    /// How often flush policies are checked, in milliseconds.
    pub flush_check_interval_ms: u64,
    /// First wait before a failed flush is retried, in milliseconds; it doubles per failure
    /// up to 5 minutes.
    pub flush_retry_base_ms: u64,
    /// How long finished jobs stay in `system.jobs`, e.g. `7d`.
    pub job_retention: String,
    /// How far back `from_seq` can resume a live query: changes are kept in memory this
    /// long (e.g. `1h`) ...
    pub live_log_retention: String,
    /// ... and up to this many bytes per table, whichever bound is hit first.
    pub live_log_max_bytes: usize,
    /// Bytes of committed changes the live-query dispatcher may fall behind by; past it, the
    /// subscribers of the changes waiting are closed with 4008 (and resume with `from_seq`)
    /// instead of every notification arriving later and later.
    pub live_dispatch_max_bytes: usize,
    /// Messages queued for one WebSocket connection before the node closes it with code
    /// 4008 (the client then resumes with `from_seq`).
    pub ws_max_queued_messages: usize,
    /// Bytes of messages queued for one WebSocket connection before the node closes it with
    /// code 4008, as `ws_max_queued_messages` does by count.
    pub ws_max_queued_bytes: usize,
    /// Subscriptions one WebSocket connection may hold at once; one more is refused with
    /// `TOO_MANY_SUBSCRIPTIONS` (the connection and its other subscriptions stay).
    pub ws_max_subscriptions: usize,
    /// WebSocket connections the node holds at once; one more upgrade is answered HTTP 503
    /// with `TOO_MANY_CONNECTIONS` (ADR 0040).
    pub ws_max_connections: usize,
    /// How often the node pings each WebSocket client, in milliseconds.
    pub ws_ping_interval_ms: u64,
    /// A connection that sent nothing (not even a pong) for this long is closed and its
    /// subscriptions removed, in milliseconds.
    pub ws_idle_timeout_ms: u64,
    /// How often STREAM tables drop events past their retention, in milliseconds.
    pub stream_eviction_interval_ms: u64,
    /// How often soft-deleted rows past their table's `deleted_retention` are removed from
    /// both tiers, e.g. `1h` (the first pass runs at start-up).
    pub cleanup_interval: String,
    /// How long a Parquet file replaced by a cleanup stays in the store, so that queries
    /// already reading it can finish, e.g. `30s` (`0s`: delete at once).
    pub cleanup_file_grace: String,
    /// After SIGTERM, how long requests in flight may take before the node stops anyway,
    /// in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// How long the node waits for the next part of an HTTP request, in milliseconds: a
    /// connection's first request, the head of each request after it (so also how long an
    /// idle keep-alive connection is kept), and each chunk of a body.
    pub http_read_timeout_ms: u64,
    /// How long one statement may run, in milliseconds; `0` for no limit.
    pub statement_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./kalamdb-data"),
            node_id: "local".to_string(),
            jwt_secret: None,
            sync_writes: false,
            max_request_bytes: 16 * 1024 * 1024,
            max_result_rows: 1_000_000,
            max_query_memory_bytes: 1024 * 1024 * 1024,
            cors_allowed_origins: vec!["*".to_string()],
            log_format: LogFormat::Text,
            log_level: "info".to_string(),
            rocksdb_write_buffer_bytes: 256 * 1024 * 1024,
            rocksdb_max_open_files: 1024,
            hot_cache_bytes: 256 * 1024 * 1024,
            cold_metadata_cache_bytes: 64 * 1024 * 1024,
            cold_read_in_memory_bytes: 1024 * 1024,
            cold_decoded_cache_bytes: 128 * 1024 * 1024,
            storage_dir: None,
            credentials_dir: None,
            default_location: None,
            flush_check_interval_ms: 1000,
            flush_retry_base_ms: 1000,
            job_retention: "7d".to_string(),
            live_log_retention: "1h".to_string(),
            live_log_max_bytes: 64 * 1024 * 1024,
            live_dispatch_max_bytes: 64 * 1024 * 1024,
            ws_max_queued_messages: 10_000,
            ws_max_queued_bytes: 64 << 20,
            ws_max_subscriptions: 1_000,
            ws_max_connections: 10_000,
            ws_ping_interval_ms: 2_000,
            ws_idle_timeout_ms: 4_500,
            stream_eviction_interval_ms: 1_000,
            cleanup_interval: "1h".to_string(),
            cleanup_file_grace: "30s".to_string(),
            shutdown_timeout_ms: 20_000,
            // Longer than the 60 s idle timeout common in proxies and load balancers, so that
            // they, not the node, close an idle connection first (ADR 0025).
            http_read_timeout_ms: 75_000,
            statement_timeout_ms: 30_000,
        }
    }
}

/// A setting that must not show in logs or panic messages: `Debug` prints no part of it.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Values given on the command line; they win over the file and the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Every setting's key, as written in `server.toml` and (upper-cased) after `KALAMDB_`:
    /// the list in `kalam-client`, which whoever writes a node's configuration (the operator)
    /// checks keys against.
    pub const KEYS: &'static [&'static str] = kalam_client::server_config::KEYS;

    /// Loads settings in the documented order of precedence.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file(path));
        }
        // Only known keys: an unrelated KALAMDB_* variable must not stop the node.
        fig = fig.merge(Env::prefixed("KALAMDB_").filter(|k| {
            Self::KEYS
                .iter()
                .any(|known| k.as_str().eq_ignore_ascii_case(known))
        }));
        let mut cfg: Config = fig
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(l) = overrides.listen {
            cfg.listen = l;
        }
        if let Some(d) = &overrides.data_dir {
            cfg.data_dir = d.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.storage_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("storage"))
    }

    pub fn credentials_dir(&self) -> PathBuf {
        self.credentials_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("credentials"))
    }

    /// The location a table created without `LOCATION` resolves to, when it is not the
    /// built-in `local` one.
    pub fn default_location(&self) -> Option<&str> {
        self.default_location
            .as_deref()
            .filter(|name| *name != crate::cold::LOCAL_LOCATION)
    }

    pub fn job_retention(&self) -> std::time::Duration {
        crate::auth::parse_duration(&self.job_retention)
            .unwrap_or(std::time::Duration::from_secs(7 * 86_400))
    }

    pub fn live_log_retention(&self) -> std::time::Duration {
        crate::auth::parse_duration(&self.live_log_retention)
            .unwrap_or(std::time::Duration::from_secs(3600))
    }

    pub fn cleanup_interval(&self) -> std::time::Duration {
        crate::auth::parse_duration(&self.cleanup_interval)
            .filter(|d| !d.is_zero())
            .unwrap_or(std::time::Duration::from_secs(3600))
    }

    /// Each statement's time limit, `None` when `statement_timeout_ms` is 0.
    pub fn statement_timeout(&self) -> Option<std::time::Duration> {
        (self.statement_timeout_ms > 0)
            .then(|| std::time::Duration::from_millis(self.statement_timeout_ms))
    }

    pub fn http_read_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.http_read_timeout_ms)
    }

    pub fn cleanup_file_grace(&self) -> std::time::Duration {
        crate::auth::parse_duration(&self.cleanup_file_grace)
            .unwrap_or(std::time::Duration::from_secs(30))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id.is_empty() || self.node_id.len() > 63 {
            return Err(ConfigError::Invalid(
                "node_id must be 1 to 63 characters".into(),
            ));
        }
        if self.max_request_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "max_request_bytes must be at least 1024".into(),
            ));
        }
        if self.max_query_memory_bytes < 16 * 1024 * 1024 {
            return Err(ConfigError::Invalid(
                "max_query_memory_bytes must be at least 16 MiB".into(),
            ));
        }
        if self.max_result_rows == 0 {
            return Err(ConfigError::Invalid(
                "max_result_rows must be at least 1".into(),
            ));
        }
        if self.flush_check_interval_ms == 0 || self.flush_retry_base_ms == 0 {
            return Err(ConfigError::Invalid(
                "flush_check_interval_ms and flush_retry_base_ms must be at least 1".into(),
            ));
        }
        if crate::auth::parse_duration(&self.job_retention).is_none() {
            return Err(ConfigError::Invalid(
                "job_retention must be a duration such as 7d or 12h".into(),
            ));
        }
        if crate::auth::parse_duration(&self.live_log_retention).is_none() {
            return Err(ConfigError::Invalid(
                "live_log_retention must be a duration such as 1h or 30m".into(),
            ));
        }
        if crate::auth::parse_duration(&self.cleanup_interval).is_none_or(|d| d.is_zero()) {
            return Err(ConfigError::Invalid(
                "cleanup_interval must be a positive duration such as 1h or 500ms".into(),
            ));
        }
        if crate::auth::parse_duration(&self.cleanup_file_grace).is_none() {
            return Err(ConfigError::Invalid(
                "cleanup_file_grace must be a duration such as 30s or 0s".into(),
            ));
        }
        if self.ws_max_queued_messages == 0
            || self.ws_max_queued_bytes == 0
            || self.ws_max_subscriptions == 0
            || self.ws_max_connections == 0
            || self.ws_ping_interval_ms == 0
            || self.stream_eviction_interval_ms == 0
            || self.live_dispatch_max_bytes == 0
        {
            return Err(ConfigError::Invalid(
                "ws_max_queued_messages, ws_max_queued_bytes, ws_max_subscriptions, ws_max_connections, ws_ping_interval_ms, stream_eviction_interval_ms and live_dispatch_max_bytes must be at least 1".into(),
            ));
        }
        if self.http_read_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "http_read_timeout_ms must be at least 1".into(),
            ));
        }
        if self.ws_idle_timeout_ms <= self.ws_ping_interval_ms {
            return Err(ConfigError::Invalid(
                "ws_idle_timeout_ms must be longer than ws_ping_interval_ms".into(),
            ));
        }
        if let Some(name) = &self.default_location {
            if crate::ids::NamespaceId::new(name.clone()).is_err() {
                return Err(ConfigError::Invalid(
                    "default_location must be a storage location name (^[a-z][a-z0-9_]*$, at most 64 characters)".into(),
                ));
            }
        }
        if matches!(&self.jwt_secret, Some(s) if s.expose().len() < 16) {
            return Err(ConfigError::Invalid(
                "jwt_secret must be at least 16 bytes long".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "server.toml",
                "node_id = \"from-file\"\nmax_result_rows = 5\nlisten = \"127.0.0.1:9000\"\n",
            )?;
            jail.set_env("KALAMDB_NODE_ID", "from-env");
            jail.set_env("KALAMDB_SYNC_WRITES", "true");
            let flags = Overrides {
                listen: Some("127.0.0.1:9100".parse().unwrap()),
                data_dir: None,
            };
            let cfg = Config::load(Some(Path::new("server.toml")), &flags).unwrap();
            assert_eq!(cfg.node_id, "from-env");
            assert_eq!(cfg.max_result_rows, 5);
            assert!(cfg.sync_writes);
            assert_eq!(cfg.listen.port(), 9100);
            Ok(())
        });
    }

    #[test]
    fn the_jwt_secret_never_shows_in_debug_output() {
        let config = Config {
            jwt_secret: Some("do-not-print-this-secret".into()),
            ..Config::default()
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains("do-not-print"), "{printed}");
        assert!(
            printed.contains("jwt_secret: Some(Secret(..))"),
            "{printed}"
        );
    }

    #[test]
    fn keys_list_matches_the_struct() {
        let value = serde_json::to_value(Config::default()).unwrap();
        let mut fields: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut keys = Config::KEYS.to_vec();
        fields.sort_unstable();
        keys.sort_unstable();
        assert_eq!(fields, keys);
    }

    #[test]
    fn default_location_is_a_location_name() {
        figment::Jail::expect_with(|jail| {
            let cfg = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(cfg.default_location(), None);
            jail.create_file("server.toml", "default_location = \"archive\"\n")?;
            let cfg = Config::load(Some(Path::new("server.toml")), &Overrides::default()).unwrap();
            assert_eq!(cfg.default_location(), Some("archive"));
            jail.set_env("KALAMDB_DEFAULT_LOCATION", "cold_s3");
            let cfg = Config::load(Some(Path::new("server.toml")), &Overrides::default()).unwrap();
            assert_eq!(cfg.default_location(), Some("cold_s3"));
            // `local` is the built-in location: the same as no setting.
            jail.set_env("KALAMDB_DEFAULT_LOCATION", "local");
            let cfg = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(cfg.default_location.as_deref(), Some("local"));
            assert_eq!(cfg.default_location(), None);
            jail.set_env("KALAMDB_DEFAULT_LOCATION", "Not-A-Name");
            assert!(Config::load(None, &Overrides::default()).is_err());
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_short_secrets_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("server.toml", "no_such_setting = 1\n")?;
            assert!(Config::load(Some(Path::new("server.toml")), &Overrides::default()).is_err());
            jail.create_file("short.toml", "jwt_secret = \"abc\"\n")?;
            assert!(Config::load(Some(Path::new("short.toml")), &Overrides::default()).is_err());
            Ok(())
        });
    }
}
