//! `kalam-client`: everything needed to talk to a KalamDB node from outside it.
//!
//! - [`wire`]: the serde types of the `POST /api/sql` contract (`API.md`), shared with the
//!   node so the two sides cannot drift apart.
//! - [`live_wire`]: the serde types of the `GET /ws` live-query protocol.
//! - [`live`]: [`LiveConnection`], the async live-query client over one WebSocket.
//! - [`client`]: [`KalamClient`], a small async HTTP client, cheap to clone and fit for
//!   latency benchmarks; its keep-alive connection pool is [`http`] (crate-private).
//! - [`task`]: [`task::inline_self_wakes`], which keeps a future whose parts wake each
//!   other (an HTTP exchange driven in one task) on the thread that runs it; the node
//!   serves its connections with it too.
//! - [`table`]: psql-style text rendering of results and errors, for people.
//! - [`token`]: the JWT claims of `API.md` §2 and HS256 minting, shared with the node.
//! - [`server_config`]: the keys of a node's `server.toml`, shared with the node and the
//!   operator.
//! - the `kalam` binary (`src/bin/kalam.rs`): a command-line client built on the above.
//!
//! The crate deliberately has no storage or query-engine dependencies (no RocksDB, no
//! DataFusion): applications, the e2e suite and the load tool depend on it, and they should
//! build in seconds.

pub mod client;
mod http;
pub mod live;
pub mod live_wire;
pub mod server_config;
pub mod table;
pub mod task;
pub mod token;
pub mod wire;

pub use client::{ClientError, KalamClient, RawSqlResponse};
pub use live::{LiveConnection, RawServerMessage, DEFAULT_QUERY_ID};
pub use live_wire::{ChangeType, ClientMessage, ServerMessage, Subscription, SubscriptionOptions};
pub use token::{Claims, Role, TokenError};
pub use wire::*;
