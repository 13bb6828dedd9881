//! The keys of a node's `server.toml` (and, upper-cased after `KALAMDB_`, of its
//! environment): the node accepts these and refuses any other, so whoever writes a node's
//! configuration (the operator, from a KalamCluster's `spec.config`) checks against the same
//! list before a node fails to start on it. The node's `Config` has a test that this list and
//! its fields agree.

/// Every setting's key (docs/configuration.md).
pub const KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "node_id",
    "jwt_secret",
    "sync_writes",
    "max_request_bytes",
    "max_result_rows",
    "max_query_memory_bytes",
    "cors_allowed_origins",
    "log_format",
    "log_level",
    "rocksdb_write_buffer_bytes",
    "rocksdb_max_open_files",
    "hot_cache_bytes",
    "cold_metadata_cache_bytes",
    "cold_read_in_memory_bytes",
    "cold_decoded_cache_bytes",
    "storage_dir",
    "credentials_dir",
    "default_location",
    "flush_check_interval_ms",
    "flush_retry_base_ms",
    "job_retention",
    "live_log_retention",
    "live_log_max_bytes",
    "live_dispatch_max_bytes",
    "ws_max_queued_messages",
    "ws_max_queued_bytes",
    "ws_max_subscriptions",
    "ws_max_connections",
    "ws_ping_interval_ms",
    "ws_idle_timeout_ms",
    "stream_eviction_interval_ms",
    "cleanup_interval",
    "cleanup_file_grace",
    "shutdown_timeout_ms",
    "http_read_timeout_ms",
    "statement_timeout_ms",
];
