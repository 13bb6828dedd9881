//! Live queries: the registry of subscriptions, the per-table change log that `from_seq`
//! resumes from, and the fan-out of committed changes to each connection's bounded queue.
//!
//! Every commit of a USER, SHARED or STREAM table reaches [`LiveHub::committed`] while the
//! table's write lock is held, so events arrive in commit order. The hub appends the event
//! to the table's log and hands it, with a snapshot of the partition's subscriptions, to one
//! dispatcher thread that evaluates the compiled predicates of the subscriptions the commit
//! can match (indexed by their `column = literal` guard) and queues the messages. Writers
//! never evaluate predicates and never wait for a socket; a connection whose queue is full is
//! closed (code 4008), never silently skipped.
//!
//! Registration takes the same per-table lock the commit path appends under: a subscription
//! sees exactly the commits appended after it registered (plus the replay of `from_seq`),
//! which is what makes "a write completed after `subscribed` is always delivered" and a
//! resume without gap or duplicate hold.
//!
//! Schema versions: an event carries the definition its rows were committed in, and a
//! subscription evaluates it in the version it was compiled against (columns matched by id,
//! with the wider type of a column widened since). ALTER TABLE checks and commits a DROP or
//! MODIFY COLUMN under the per-table lock ([`LiveHub::while_column_unused`]), so no
//! subscription can start using a column while it is being dropped.

pub mod query;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{Array, BooleanArray, RecordBatch};
use datafusion::physical_expr::PhysicalExpr;
use kalam_client::live_wire::{
    ChangeType, ServerMessage, SubscriptionOptions, CLOSE_INTERNAL, CLOSE_TOO_SLOW,
};
use kalam_client::wire::Row;
use parking_lot::{Mutex, RwLock};
use prometheus::{IntCounter, IntGauge};
use tokio::sync::{mpsc, watch};

use crate::auth::Principal;
use crate::catalog::TableDef;
use crate::error::{KalamError, Result};
use crate::ids::{TableId, UserId};
use crate::live::query::{ColumnUse, CompiledQuery, GuardValue};
use crate::sql::output::query_result;
use crate::sql::rows::rows_to_batch;
use crate::storage::codec::Reshape;
use crate::storage::table::{ChangeSink, CommittedBatch};
use crate::storage::{Partition, StoredRow, Value};

/// Why the node closes a connection: a WebSocket close code and a reason for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
}

/// A WebSocket connection as the hub sees it: who it is, its outgoing queue, and the
/// signal that tells its socket task to close.
#[derive(Debug)]
pub struct Connection {
    pub id: String,
    /// Unique within the process; what the dispatcher groups by.
    number: u64,
    pub principal: Principal,
    queue: mpsc::Sender<String>,
    /// Bytes of the messages in `queue`, bounded by `max_queued_bytes` as the queue is by
    /// messages: ten thousand changes of large rows must not pile up for a client that
    /// stopped reading.
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
    close: watch::Sender<Option<CloseReason>>,
    /// Set with the first close, before the socket task hears of it: from then on nothing
    /// more is queued, so what the client gets is a gapless prefix of its changes and a
    /// resume from the last `seq` it saw misses nothing (a smaller change after one that did
    /// not fit would otherwise still fit, and go out).
    closing: AtomicBool,
    subscriptions: Mutex<HashMap<String, Arc<Subscription>>>,
    metrics: LiveMetrics,
}

impl Connection {
    /// Queues one message; a full queue (by messages or by bytes) closes the connection
    /// (code 4008) instead of waiting or dropping. Returns whether the message was queued.
    pub fn send(&self, text: String) -> bool {
        if self.closing.load(Ordering::Acquire) {
            return false;
        }
        let bytes = text.len();
        let before = self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        // One message is always queued when nothing else is (a large `initial_data`).
        if before > 0 && before + bytes > self.max_queued_bytes {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.metrics.slow_closed.inc();
            self.close(
                CLOSE_TOO_SLOW,
                format!(
                    "client too slow: more than {} bytes queued; reconnect and resume with \
                     from_seq",
                    self.max_queued_bytes
                ),
            );
            return false;
        }
        let sent = self.queue.try_send(text);
        if sent.is_err() {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
        match sent {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.slow_closed.inc();
                self.close(
                    CLOSE_TOO_SLOW,
                    format!(
                        "client too slow: {} messages queued; reconnect and resume with from_seq",
                        self.queue.max_capacity()
                    ),
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    pub fn send_message(&self, message: &ServerMessage) -> bool {
        match serde_json::to_string(message) {
            Ok(text) => self.send(text),
            Err(e) => {
                tracing::error!(error = %e, "encoding a live-query message");
                false
            }
        }
    }

    /// Asks the socket task to close with `code`; the first reason wins.
    pub fn close(&self, code: u16, reason: impl Into<String>) {
        self.closing.store(true, Ordering::Release);
        let reason = reason.into();
        self.close.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(CloseReason { code, reason });
            true
        });
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// The socket task took `text` off the queue.
    pub fn dequeued(&self, text: &str) {
        self.queued_bytes.fetch_sub(text.len(), Ordering::AcqRel);
    }
}

/// One registered subscription.
#[derive(Debug)]
pub struct Subscription {
    pub live_id: String,
    pub query_id: String,
    pub connection: Arc<Connection>,
    pub table: TableId,
    table_uid: String,
    pub partition: Partition,
    pub query: CompiledQuery,
    pub sql: String,
    /// The options as the client sent them, for `system.live_queries` (kept typed: a JSON
    /// map would cost every subscription a tree node of several hundred bytes).
    pub options: SubscriptionOptions,
    pub created_at: DateTime<Utc>,
    /// Registration order: the changes of one commit reach a connection's subscriptions in
    /// the order they were registered (see [`Subscription::order`]).
    registered: u64,
    /// `query_id` and `live_id` as JSON strings, encoded once for all its messages.
    quoted: QuotedIds,
    /// [`ShapeId`] of its shape: subscriptions with equal ids see a commit alike, so the
    /// dispatcher compares ids, never the shapes.
    shape: ShapeId,
    /// Option `group`: a commit that reaches several such subscriptions of one connection in
    /// one shape goes out as one `change_group` frame naming them all.
    group: bool,
    /// The last commit before registration: commits up to it never reach this subscription
    /// (they were appended before it existed; `from_seq` replays are sent at registration).
    after: u64,
    updated_at_micros: AtomicI64,
    changes: AtomicU64,
    active: AtomicBool,
    /// While `initial_data` is being read, messages wait here so that the client sees
    /// `subscribed`, `initial_data`, then changes.
    held: Mutex<Option<Held>>,
    /// Whether `held` may still hold messages back: false once released (under its lock,
    /// after the held messages are queued), never true again. Read without the lock by the
    /// dispatcher, which only needs to know that nothing is held any more.
    holding: AtomicBool,
}

/// Changes held back for a subscription while its `initial_data` is read.
#[derive(Debug, Default)]
struct Held {
    messages: Vec<String>,
    bytes: usize,
}

impl Subscription {
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    pub fn updated_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.updated_at_micros.load(Ordering::Relaxed))
            .unwrap_or(self.created_at)
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    fn deliver(&self, text: String) {
        let mut held = self.held.lock();
        match held.as_mut() {
            Some(buffer) => {
                // The connection's queue bounds, by messages and by bytes, hold for what
                // waits here too: it is queued as one when released.
                let connection = &self.connection;
                let too_many = buffer.messages.len() >= connection.queue.max_capacity()
                    || (buffer.bytes > 0
                        && buffer.bytes + text.len() > connection.max_queued_bytes);
                if too_many {
                    connection.metrics.slow_closed.inc();
                    connection.close(
                        CLOSE_TOO_SLOW,
                        "too many changes while initial_data was read; resume with from_seq",
                    );
                } else if !connection.is_closing() {
                    buffer.bytes += text.len();
                    buffer.messages.push(text);
                }
            }
            None => {
                self.connection.send(text);
            }
        }
    }

    /// Renders the `from_seq` replay and puts it ahead of the live changes held meanwhile
    /// (all of them committed after the replay's); returns the messages it stands for.
    fn replay(&self, events: &[Arc<ChangeEvent>], now: i64) -> u64 {
        let mut messages = Vec::new();
        let mut bytes = 0;
        for event in events {
            if self.connection.is_closing() || !self.is_active() {
                return 0;
            }
            for part in render(event, &self.query) {
                let text = change_message(&self.quoted.envelope(), &part, event.batch.seq);
                bytes += text.len();
                messages.push(text);
            }
        }
        let count = messages.len() as u64;
        let mut held = self.held.lock();
        let Some(buffer) = held.as_mut() else {
            return 0;
        };
        let connection = &self.connection;
        let total = messages.len() + buffer.messages.len();
        if total > connection.queue.max_capacity()
            || (total > 1 && bytes + buffer.bytes > connection.max_queued_bytes)
        {
            connection.metrics.slow_closed.inc();
            connection.close(
                CLOSE_TOO_SLOW,
                "the changes since from_seq do not fit the connection's queue; resume from a \
                 later seq or refetch with last_rows",
            );
            return 0;
        }
        buffer.bytes += bytes;
        buffer.messages.splice(0..0, messages);
        if count > 0 {
            self.counted(count, now);
        }
        count
    }

    /// Sends what was held back while `initial_data` was read, then delivers directly.
    pub fn release(&self) {
        let mut held = self.held.lock();
        if let Some(buffer) = held.take() {
            for text in buffer.messages {
                if !self.connection.send(text) {
                    break;
                }
            }
        }
        self.holding.store(false, Ordering::Release);
    }

    /// Where the dispatcher takes it: by connection, then by registration. A connection's
    /// subscriptions stand together, so its frames go out as soon as the dispatcher moves
    /// on to the next connection, and they come in the order they were registered.
    fn order(&self) -> (u64, u64) {
        (self.connection.number, self.registered)
    }

    /// Whether this subscription's changes may go out in a `change_group` frame now: it
    /// asked for that and nothing is held back for it any more (once released, a
    /// subscription is never held again, so the answer stays true).
    fn groupable(&self) -> bool {
        self.group && !self.holding.load(Ordering::Acquire)
    }

    /// Whether the commit numbered `seq` reaches it: it is active and was registered before
    /// the commit.
    fn reached_by(&self, seq: u64) -> bool {
        seq > self.after && self.is_active()
    }

    fn counted(&self, messages: u64, at_micros: i64) {
        self.changes.fetch_add(messages, Ordering::Relaxed);
        self.updated_at_micros.store(at_micros, Ordering::Relaxed);
    }
}

/// A commit as the live side keeps it: the rows, and their Arrow and JSON images built
/// once, on first use, for every subscription that evaluates it; images in another schema
/// version (for subscriptions compiled before or after an ALTER) are built once per version.
#[derive(Debug)]
struct ChangeEvent {
    batch: CommittedBatch,
    /// The definition the rows were committed in.
    def: Arc<TableDef>,
    at: Instant,
    bytes: usize,
    images: OnceLock<Option<Arc<Images>>>,
    other_versions: Mutex<Vec<(u32, Option<Arc<Images>>)>>,
}

#[derive(Debug)]
struct Images {
    new: RecordBatch,
    new_json: Vec<Row>,
    /// Old images of the rows that have one, and which row each belongs to.
    old: RecordBatch,
    old_json: Vec<Row>,
    old_of: Vec<Option<usize>>,
}

/// The shape in which a subscription compiled against `sub` sees rows committed in `event`:
/// the subscription's columns, each with the type it has in the newer of the two versions
/// (types only widen), so a value written after a MODIFY COLUMN is never narrowed. Its
/// predicate never reads a column widened since it was compiled (MODIFY COLUMN is refused
/// while a live query filters on the column).
fn image_def(sub: &TableDef, event: &TableDef) -> TableDef {
    let mut def = sub.clone();
    if event.schema_version > sub.schema_version {
        for c in &mut def.columns {
            if let Some(e) = event.columns.iter().find(|e| e.id == c.id) {
                c.data_type = e.data_type;
            }
        }
    }
    def
}

impl ChangeEvent {
    /// The images for a subscription compiled against `sub`.
    fn images_for(&self, sub: &TableDef) -> Option<Arc<Images>> {
        if sub.schema_version == self.def.schema_version {
            return self
                .images
                .get_or_init(|| self.build_logged(&self.def))
                .clone();
        }
        let mut others = self.other_versions.lock();
        if let Some((_, images)) = others.iter().find(|(v, _)| *v == sub.schema_version) {
            return images.clone();
        }
        let images = self.build_logged(&image_def(sub, &self.def));
        others.push((sub.schema_version, images.clone()));
        images
    }

    fn build_logged(&self, target: &TableDef) -> Option<Arc<Images>> {
        match self.build_images(target) {
            Ok(images) => Some(Arc::new(images)),
            Err(e) => {
                tracing::error!(table = %self.def.id(), seq = self.batch.seq, error = %e, "building live-query images");
                None
            }
        }
    }

    /// The images of the rows in the columns of `target` (the event's own definition, or
    /// one of another version of the table).
    fn build_images(&self, target: &TableDef) -> Result<Images> {
        let schema = target.arrow_schema();
        let version = target.schema_version;
        let reshape = (version != self.def.schema_version)
            .then(|| Reshape::new(&self.def.columns, &target.columns));
        let shaped = |values: &[Value]| match &reshape {
            Some(plan) => plan.apply(values.to_vec()),
            None => values.to_vec(),
        };
        let mut new_rows = Vec::with_capacity(self.batch.rows.len());
        let mut old_rows = Vec::new();
        let mut old_of = Vec::with_capacity(self.batch.rows.len());
        for row in &self.batch.rows {
            new_rows.push(StoredRow {
                schema_version: version,
                seq: self.batch.seq,
                updated_micros: self.batch.updated_micros,
                deleted: row.deleted,
                values: shaped(row.new.as_slice()),
            });
            old_of.push(row.old.as_ref().map(|old| {
                old_rows.push(StoredRow {
                    schema_version: version,
                    seq: 0,
                    updated_micros: old.updated_micros,
                    deleted: old.deleted,
                    values: shaped(old.values.as_slice()),
                });
                old_rows.len() - 1
            }));
        }
        let new = rows_to_batch(target, &schema, &new_rows)?;
        let old = rows_to_batch(target, &schema, &old_rows)?;
        let new_json = query_result(&schema, std::slice::from_ref(&new))?.rows;
        let old_json = query_result(&schema, std::slice::from_ref(&old))?.rows;
        Ok(Images {
            new,
            new_json,
            old,
            old_json,
            old_of,
        })
    }
}

/// Rough in-memory size of a commit, for the change log's byte bound.
fn event_bytes(batch: &CommittedBatch) -> usize {
    fn values(v: &[Value]) -> usize {
        v.iter()
            .map(|v| match v {
                Value::Text(s) => 24 + s.len(),
                Value::Bytes(b) => 24 + b.len(),
                _ => 16,
            })
            .sum()
    }
    batch
        .rows
        .iter()
        .map(|r| 64 + values(&r.new) + r.old.as_ref().map_or(0, |o| 32 + values(&o.values)))
        .sum::<usize>()
        + 96
}

/// Per table: the retained change log and the subscriptions by partition.
#[derive(Debug, Default)]
struct TableLive {
    log: VecDeque<Arc<ChangeEvent>>,
    log_bytes: usize,
    /// Changes with `seq <= evicted_through` are no longer retained.
    evicted_through: u64,
    /// The last commit appended.
    last_seq: u64,
    /// Partition prefix -> its subscriptions.
    subscriptions: HashMap<Vec<u8>, Listeners>,
    /// DROP TABLE committed: nothing registers any more.
    dropped: bool,
}

/// A partition's subscriptions, indexed by their equality guard (`column = literal`), so a
/// commit is evaluated only for the subscriptions one of its rows can match: a thousand
/// subscriptions watching other conversations cost a commit a hash lookup, not a thousand
/// checks. Kept under the table's lock and changed in place (a subscribe or a disconnect
/// costs O(log n), also with 10,000 subscriptions on one value); the dispatcher takes the
/// [`Plan`] of each list a commit can reach and skips subscriptions registered after the
/// commit (`Subscription::after`).
#[derive(Debug, Default)]
struct Listeners {
    unguarded: List,
    /// Guard column -> guard value -> the subscriptions requiring it.
    guarded: HashMap<String, HashMap<GuardValue, List>>,
}

/// Subscriptions by [`Subscription::order`], and the dispatch plan built from them on the
/// first commit after they last changed.
#[derive(Debug, Default)]
struct List {
    members: BTreeMap<(u64, u64), Arc<Subscription>>,
    plan: Option<Arc<Plan>>,
}

impl List {
    fn plan(&mut self) -> Arc<Plan> {
        self.plan
            .get_or_insert_with(|| Arc::new(Plan::of(self.members.values())))
            .clone()
    }
}

impl Listeners {
    fn insert(&mut self, subscription: Arc<Subscription>) {
        let list = match &subscription.query.guard {
            Some(guard) => self
                .guarded
                .entry(guard.column.clone())
                .or_default()
                .entry(guard.value.clone())
                .or_default(),
            None => &mut self.unguarded,
        };
        list.members.insert(subscription.order(), subscription);
        list.plan = None;
    }

    fn remove(&mut self, subscription: &Subscription) {
        let id = subscription.order();
        let Some(guard) = &subscription.query.guard else {
            self.unguarded.members.remove(&id);
            self.unguarded.plan = None;
            return;
        };
        let Some(by_value) = self.guarded.get_mut(&guard.column) else {
            return;
        };
        if let Some(list) = by_value.get_mut(&guard.value) {
            list.members.remove(&id);
            list.plan = None;
            if list.members.is_empty() {
                by_value.remove(&guard.value);
            }
        }
        if by_value.is_empty() {
            self.guarded.remove(&guard.column);
        }
    }

    fn is_empty(&self) -> bool {
        self.unguarded.members.is_empty() && self.guarded.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<Subscription>> {
        self.unguarded.members.values().chain(
            self.guarded
                .values()
                .flat_map(|by_value| by_value.values().flat_map(|list| list.members.values())),
        )
    }

    /// The plans of the lists a commit may reach: the unguarded subscriptions, and the
    /// guarded ones whose value is in the guard column of one of its rows (new or old
    /// image). When the commit's schema has no such column nothing can be ruled out.
    fn plans(&mut self, event: &ChangeEvent) -> Vec<Arc<Plan>> {
        let mut out = Vec::new();
        if !self.unguarded.members.is_empty() {
            out.push(self.unguarded.plan());
        }
        for (column, by_value) in &mut self.guarded {
            match guard_values(event, column) {
                Some(values) => {
                    for value in &values {
                        if let Some(list) = by_value.get_mut(value) {
                            out.push(list.plan());
                        }
                    }
                }
                None => out.extend(by_value.values_mut().map(List::plan)),
            }
        }
        out
    }
}

/// How a commit goes out to the subscriptions of one [`List`]: per connection, the
/// subscriptions with option `group` of one shape as one group (one `change_group` frame,
/// its ids encoded here once, not on every commit), every other subscription alone; in
/// the order of each item's first subscription, which is the order of registration.
#[derive(Debug)]
struct Plan {
    items: Vec<Item>,
}

#[derive(Debug)]
enum Item {
    One(Arc<Subscription>),
    Group {
        members: Vec<Arc<Subscription>>,
        /// The frame up to the change type (see [`group_head`]).
        head: String,
    },
}

impl Item {
    fn first(&self) -> &Arc<Subscription> {
        match self {
            Item::One(s) => s,
            // A group has at least two members.
            Item::Group { members, .. } => &members[0],
        }
    }
}

impl Plan {
    /// `members` in [`Subscription::order`].
    fn of<'a>(members: impl Iterator<Item = &'a Arc<Subscription>>) -> Self {
        let mut lists: Vec<Vec<Arc<Subscription>>> = Vec::new();
        // The groups of the connection at hand, by shape.
        let mut group_of: HashMap<ShapeId, usize> = HashMap::new();
        let mut connection = None;
        for subscription in members {
            if connection != Some(subscription.connection.number) {
                group_of.clear();
                connection = Some(subscription.connection.number);
            }
            if !subscription.group {
                lists.push(vec![subscription.clone()]);
                continue;
            }
            let at = *group_of.entry(subscription.shape).or_insert_with(|| {
                lists.push(Vec::new());
                lists.len() - 1
            });
            lists[at].push(subscription.clone());
        }
        let items = lists
            .into_iter()
            .map(|mut members| match members.len() {
                1 => Item::One(members.remove(0)),
                _ => Item::Group {
                    head: group_head(members.iter()),
                    members,
                },
            })
            .collect();
        Plan { items }
    }
}

impl TableLive {
    /// `TableInUse` naming `what` and the live ids of the active subscriptions for which
    /// `uses` holds, when there are any.
    fn refuse_if_used(
        &self,
        what: impl FnOnce() -> String,
        uses: impl Fn(&Subscription) -> bool,
    ) -> Result<()> {
        let mut users: Vec<String> = self
            .subscriptions
            .values()
            .flat_map(|list| list.iter())
            .filter(|s| s.is_active() && uses(s))
            .map(|s| s.live_id.clone())
            .collect();
        if users.is_empty() {
            return Ok(());
        }
        users.sort();
        Err(KalamError::TableInUse {
            what: what(),
            live_ids: users,
        })
    }

    fn evict(&mut self, retention: Duration, max_bytes: usize) {
        while let Some(front) = self.log.front() {
            if self.log_bytes <= max_bytes && front.at.elapsed() <= retention {
                break;
            }
            self.log_bytes -= front.bytes;
            self.evicted_through = front.batch.seq;
            self.log.pop_front();
        }
    }
}

struct Dispatch {
    event: Arc<ChangeEvent>,
    /// The table's live state, whose listeners of the event's partition the dispatcher reads.
    table: Arc<Mutex<TableLive>>,
}

/// Live-query metrics, registered with the node's registry.
#[derive(Debug, Clone)]
pub struct LiveMetrics {
    pub subscriptions: IntGauge,
    pub connections: IntGauge,
    pub messages: IntCounter,
    pub slow_closed: IntCounter,
    /// Bytes of committed changes handed to the dispatcher and not yet delivered.
    pub dispatch_backlog_bytes: IntGauge,
    /// Changes not evaluated because the dispatcher was over `live_dispatch_max_bytes`
    /// behind; their subscribers were closed with 4008 instead.
    pub dispatch_shed: IntCounter,
}

impl LiveMetrics {
    fn new() -> Self {
        // Names and help texts are constants: construction cannot fail.
        let gauge = |n: &str, h: &str| IntGauge::new(n, h).expect("valid metric");
        let counter = |n: &str, h: &str| IntCounter::new(n, h).expect("valid metric");
        Self {
            subscriptions: gauge("kalamdb_live_subscriptions", "Live queries registered now"),
            connections: gauge("kalamdb_ws_connections", "WebSocket connections open now"),
            messages: counter(
                "kalamdb_live_change_messages_total",
                "Change messages queued to subscribers",
            ),
            slow_closed: counter(
                "kalamdb_ws_slow_closed_total",
                "Connections closed because their queue overflowed (code 4008)",
            ),
            dispatch_backlog_bytes: gauge(
                "kalamdb_live_dispatch_backlog_bytes",
                "Bytes of committed changes waiting for the live-query dispatcher",
            ),
            dispatch_shed: counter(
                "kalamdb_live_dispatch_shed_total",
                "Changes whose subscribers were closed (code 4008) because the dispatcher was \
                 more than live_dispatch_max_bytes behind",
            ),
        }
    }

    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.subscriptions.clone()),
            Box::new(self.connections.clone()),
            Box::new(self.messages.clone()),
            Box::new(self.slow_closed.clone()),
            Box::new(self.dispatch_backlog_bytes.clone()),
            Box::new(self.dispatch_shed.clone()),
        ]
    }
}

/// Settings of the hub, from the node's configuration.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    pub node_id: String,
    pub retention: Duration,
    pub max_log_bytes: usize,
    pub queue_messages: usize,
    pub queue_bytes: usize,
    /// Subscriptions per connection (`ws_max_subscriptions`).
    pub max_subscriptions: usize,
    /// How far the dispatcher may fall behind the commits, in bytes of changes
    /// (`live_dispatch_max_bytes`), before it sheds instead of delivering.
    pub max_dispatch_bytes: usize,
}

#[derive(Debug)]
pub struct LiveHub {
    settings: LiveSettings,
    /// Keyed by the table's creation uid: a table dropped and created again starts afresh.
    tables: RwLock<HashMap<String, Arc<Mutex<TableLive>>>>,
    registry: Mutex<BTreeMap<String, Arc<Subscription>>>,
    dispatch: mpsc::UnboundedSender<Dispatch>,
    /// Bytes of the changes in `dispatch` and the one being delivered: what bounds the
    /// channel, which writers never wait on.
    backlog: Arc<AtomicUsize>,
    next_connection: AtomicU64,
    next_subscription: AtomicU64,
    pub metrics: LiveMetrics,
}

impl std::fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dispatch(seq {})", self.event.batch.seq)
    }
}

impl LiveHub {
    /// Creates the hub and its dispatcher: a task of the current Tokio runtime when there is
    /// one, so that a commit hands its event over and the dispatcher wakes socket tasks
    /// without waking another OS thread (two cross-CPU wakeups per change otherwise);
    /// outside a runtime (embedded use, criterion) a thread of its own runs the same loop.
    /// Either way one loop takes the events in commit order.
    pub fn new(settings: LiveSettings) -> Result<Arc<Self>> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Dispatch>();
        let metrics = LiveMetrics::new();
        let backlog = Arc::new(AtomicUsize::new(0));
        let dispatcher = {
            let metrics = metrics.clone();
            let backlog = backlog.clone();
            let max = settings.max_dispatch_bytes;
            async move {
                let mut shedding = false;
                while let Some(job) = rx.recv().await {
                    // This change and every one committed after it.
                    let waiting = backlog.load(Ordering::Acquire);
                    if waiting > max {
                        if !shedding {
                            tracing::warn!(
                                waiting_bytes = waiting,
                                live_dispatch_max_bytes = max,
                                "live queries fell behind the commits; closing the \
                                 subscribers of the changes waiting (4008) until caught up"
                            );
                        }
                        shedding = true;
                        shed(&job, max, &metrics);
                    } else {
                        if shedding {
                            tracing::info!("live queries caught up with the commits");
                        }
                        shedding = false;
                        dispatch_or_close(&job, &metrics.messages);
                    }
                    let bytes = job.event.bytes;
                    let left = backlog
                        .fetch_sub(bytes, Ordering::AcqRel)
                        .saturating_sub(bytes);
                    metrics.dispatch_backlog_bytes.set(gauge_value(left));
                    // Tests hold the dispatcher up here, as more subscriptions than it can
                    // evaluate would (FAILPOINTS=live-dispatch-stall=1*return(2000)).
                    stall_point!("live-dispatch-stall");
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(dispatcher);
            }
            Err(_) => {
                std::thread::Builder::new()
                    .name("kalamdb-live".into())
                    .spawn(move || futures::executor::block_on(dispatcher))
                    .map_err(KalamError::internal)?;
            }
        }
        Ok(Arc::new(Self {
            settings,
            tables: RwLock::new(HashMap::new()),
            registry: Mutex::new(BTreeMap::new()),
            dispatch: tx,
            backlog,
            next_connection: AtomicU64::new(1),
            next_subscription: AtomicU64::new(1),
            metrics,
        }))
    }

    pub fn node_id(&self) -> &str {
        &self.settings.node_id
    }

    /// Registers a new connection: its handle, the receiving end of its queue, and the
    /// signal its socket task watches for a close.
    pub fn connect(
        &self,
        principal: Principal,
    ) -> (
        Arc<Connection>,
        mpsc::Receiver<String>,
        watch::Receiver<Option<CloseReason>>,
    ) {
        let (tx, rx) = mpsc::channel(self.settings.queue_messages.max(1));
        let (close, close_rx) = watch::channel(None);
        // Random high bits so ids do not repeat across restarts; a counter so they never
        // repeat within one process.
        let n = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:04x}{:04x}", rand::random::<u16>(), n & 0xffff);
        self.metrics.connections.inc();
        let connection = Arc::new(Connection {
            id,
            number: n,
            principal,
            queue: tx,
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes: self.settings.queue_bytes.max(1),
            close,
            closing: AtomicBool::new(false),
            subscriptions: Mutex::new(HashMap::new()),
            metrics: self.metrics.clone(),
        });
        (connection, rx, close_rx)
    }

    fn table_state(&self, def: &TableDef, last_seq: u64) -> Arc<Mutex<TableLive>> {
        if let Some(t) = self.tables.read().get(&def.uid) {
            return t.clone();
        }
        self.tables
            .write()
            .entry(def.uid.clone())
            .or_insert_with(|| {
                // Nothing before now is retained (the log lives in memory).
                Arc::new(Mutex::new(TableLive {
                    evicted_through: last_seq,
                    last_seq,
                    ..Default::default()
                }))
            })
            .clone()
    }

    /// Registers a subscription and sends `subscribed` (and, with `from_seq`, the replay)
    /// before any later commit can reach it. With `last_rows` its changes wait until
    /// [`Subscription::release`] (the caller sends `initial_data` first). Returns the
    /// subscription and the sequence it starts after (what `initial_data` reports).
    pub fn subscribe(
        &self,
        connection: &Arc<Connection>,
        query_id: String,
        sql: String,
        options: SubscriptionOptions,
        query: CompiledQuery,
        partition: Partition,
    ) -> Result<(Arc<Subscription>, u64)> {
        let from_seq = options.from_seq;
        // Changes wait while `initial_data` is read (the caller releases them) and while a
        // `from_seq` replay is rendered (released here): live ones must follow both.
        let initial_data = options.last_rows.is_some_and(|n| n > 0);
        let hold = initial_data || from_seq.is_some();
        let group = options.group == Some(true);
        let def = query.runtime.def().clone();
        let live_id = format!(
            "{}-{}-{}-{}",
            connection.principal.user_id, connection.id, def.name, query_id
        );
        let mut subs = connection.subscriptions.lock();
        if subs.contains_key(&query_id) {
            return Err(KalamError::DuplicateQueryId(query_id));
        }
        if subs.len() >= self.settings.max_subscriptions {
            return Err(KalamError::TooManySubscriptions {
                limit: self.settings.max_subscriptions,
            });
        }
        // A DROP TABLE committed meanwhile: before the hub forgot the table (it marks the
        // state under this lock) or after (the store is marked by then).
        let gone = || KalamError::TableNotFound(def.id().to_string());
        if query.runtime.store.is_dropped() {
            return Err(gone());
        }
        let table = self.table_state(&def, query.runtime.store.last_seq());
        let mut state = table.lock();
        if state.dropped || query.runtime.store.is_dropped() {
            return Err(gone());
        }
        // An ALTER commits under this lock too: either it saw this subscription, or it has
        // committed and the query must still fit the table.
        let current = query.runtime.store.def();
        if current.schema_version != def.schema_version {
            query.check_against(&current)?;
        }
        state.evict(self.settings.retention, self.settings.max_log_bytes);
        if let Some(from) = from_seq {
            if from < state.evicted_through || from > state.last_seq {
                return Err(KalamError::ResumeGap {
                    from_seq: from,
                    oldest: state.evicted_through,
                });
            }
        }
        let start_seq = state.last_seq;
        let shape = ShapeId::of(&connection.principal.user_id, &query);
        let now = Utc::now();
        let subscription = Arc::new(Subscription {
            live_id: live_id.clone(),
            query_id: query_id.clone(),
            connection: connection.clone(),
            table: def.id(),
            table_uid: def.uid.clone(),
            partition: partition.clone(),
            query,
            sql,
            options,
            created_at: now,
            registered: self.next_subscription.fetch_add(1, Ordering::Relaxed),
            quoted: QuotedIds::new(&query_id, &live_id),
            shape,
            group,
            after: start_seq,
            updated_at_micros: AtomicI64::new(now.timestamp_micros()),
            changes: AtomicU64::new(0),
            active: AtomicBool::new(true),
            held: Mutex::new(hold.then(Held::default)),
            holding: AtomicBool::new(hold),
        });
        // `subscribed` goes straight to the queue, ahead of anything held back.
        connection.send_message(&ServerMessage::Subscribed {
            query_id: query_id.clone(),
            live_id: live_id.clone(),
        });
        // Only the events are taken under the lock, which every commit of the table waits
        // for; rendering them (up to `live_log_max_bytes` of them, for each subscription of
        // a request) happens after it.
        let replay: Vec<Arc<ChangeEvent>> = match from_seq {
            Some(from) => state
                .log
                .iter()
                .filter(|e| e.batch.seq > from && e.batch.partition == partition)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        let key = partition.prefix();
        state
            .subscriptions
            .entry(key)
            .or_default()
            .insert(subscription.clone());
        drop(state);
        subs.insert(query_id, subscription.clone());
        drop(subs);
        self.registry.lock().insert(live_id, subscription.clone());
        self.metrics.subscriptions.inc();
        if from_seq.is_some() {
            let replayed = subscription.replay(&replay, now.timestamp_micros());
            self.metrics.messages.inc_by(replayed);
            if !initial_data {
                subscription.release();
            }
        }
        Ok((subscription, start_seq))
    }

    /// Removes a subscription everywhere; nothing is delivered to it afterwards.
    fn remove(&self, subscription: &Arc<Subscription>) {
        if !subscription.active.swap(false, Ordering::AcqRel) {
            return;
        }
        self.registry.lock().remove(&subscription.live_id);
        subscription
            .connection
            .subscriptions
            .lock()
            .remove(&subscription.query_id);
        if let Some(table) = self.tables.read().get(&subscription.table_uid) {
            let mut state = table.lock();
            let key = subscription.partition.prefix();
            if let Some(listeners) = state.subscriptions.get_mut(&key) {
                listeners.remove(subscription);
                if listeners.is_empty() {
                    state.subscriptions.remove(&key);
                }
            }
        }
        self.metrics.subscriptions.dec();
    }

    /// `unsubscribe`: false when the connection has no such subscription.
    pub fn unsubscribe(&self, connection: &Connection, query_id: &str) -> bool {
        let found = connection.subscriptions.lock().get(query_id).cloned();
        match found {
            Some(s) => {
                self.remove(&s);
                true
            }
            None => false,
        }
    }

    /// A connection ended: all its subscriptions go.
    pub fn disconnect(&self, connection: &Connection) {
        let all: Vec<Arc<Subscription>> =
            connection.subscriptions.lock().values().cloned().collect();
        for s in all {
            self.remove(&s);
        }
        self.metrics.connections.dec();
    }

    /// `KILL LIVE QUERY`: users end their own subscriptions, admins anyone's. The
    /// subscription's client gets an `error` with `LIVE_QUERY_KILLED`.
    pub fn kill(&self, live_id: &str, by: &Principal) -> Result<()> {
        let found = self.registry.lock().get(live_id).cloned();
        let Some(subscription) = found else {
            return Err(KalamError::LiveQueryNotFound(crate::error::clip(live_id)));
        };
        if !by.is_admin() && subscription.connection.principal.user_id != by.user_id {
            return Err(KalamError::Forbidden(
                "only admins may kill another user's live query".into(),
            ));
        }
        self.remove(&subscription);
        // Released first so the error follows anything already held for the client.
        subscription.release();
        subscription.connection.send_message(&ServerMessage::Error {
            query_id: Some(subscription.query_id.clone()),
            code: kalam_client::wire::ErrorCode::LiveQueryKilled,
            // Says who only as a role: the subscriber has no business knowing admins' ids.
            message: if subscription.connection.principal.user_id == by.user_id {
                format!("live query {live_id} was killed by its owner")
            } else {
                format!("live query {live_id} was killed by an admin")
            },
            details: None,
        });
        Ok(())
    }

    /// Every registered subscription, for `system.live_queries`.
    pub fn list(&self) -> Vec<Arc<Subscription>> {
        self.registry.lock().values().cloned().collect()
    }

    /// Starts keeping the live state of a table as its store opens, from its last commit: a
    /// first subscription must not take its start from the store, whose sequence moves
    /// before the commit reaches the hub (it would skip that commit).
    pub fn track(&self, def: &TableDef, last_seq: u64) {
        self.table_state(def, last_seq);
    }

    /// Runs `commit` (DROP TABLE's catalog commit) unless subscriptions use the table, which
    /// is `TableInUse` listing their live ids; none can register meanwhile (this holds the
    /// lock registration takes), nor after a commit that succeeded.
    pub fn while_table_unused<T>(
        &self,
        def: &TableDef,
        last_seq: u64,
        commit: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let table = self.table_state(def, last_seq);
        let mut state = table.lock();
        state.refuse_if_used(|| format!("table {}", def.id()), |_| true)?;
        let out = commit();
        if out.is_ok() {
            state.dropped = true;
        }
        out
    }

    /// Runs `commit` (an ALTER TABLE's catalog commit) unless a subscription of the table
    /// uses `column` of `def` as `usage` says (DROP COLUMN: selects or filters on it; MODIFY
    /// COLUMN: filters on it), which is `TableInUse` listing their live ids. Subscriptions
    /// are matched by column id, whatever version they were compiled against, and none can
    /// register meanwhile: this holds the per-table lock registration takes. The caller
    /// holds the table's write lock (taken before this one, as on the commit path).
    pub fn while_column_unused<T>(
        &self,
        def: &TableDef,
        last_seq: u64,
        column: &str,
        usage: ColumnUse,
        commit: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let Some(id) = def.column(column).map(|c| c.id) else {
            return commit();
        };
        let table = self.table_state(def, last_seq);
        let state = table.lock();
        state.refuse_if_used(
            || format!("column {column} of {}", def.id()),
            |s| s.query.uses(id, usage),
        )?;
        let out = commit();
        drop(state);
        out
    }

    /// The table is gone: its log goes too.
    pub fn forget_table(&self, def: &TableDef) {
        self.tables.write().remove(&def.uid);
    }
}

impl ChangeSink for LiveHub {
    fn committed(&self, def: &Arc<TableDef>, batch: CommittedBatch) {
        let table = self.table_state(def, batch.seq.saturating_sub(1));
        let bytes = event_bytes(&batch);
        let key = batch.partition.prefix();
        let event = Arc::new(ChangeEvent {
            batch,
            def: def.clone(),
            at: Instant::now(),
            bytes,
            images: OnceLock::new(),
            other_versions: Mutex::new(Vec::new()),
        });
        let mut state = table.lock();
        state.last_seq = event.batch.seq;
        state.log.push_back(event.clone());
        state.log_bytes += bytes;
        state.evict(self.settings.retention, self.settings.max_log_bytes);
        let listened = state.subscriptions.contains_key(&key);
        drop(state);
        if listened {
            let bytes = event.bytes;
            let waiting = self.backlog.fetch_add(bytes, Ordering::AcqRel) + bytes;
            self.metrics
                .dispatch_backlog_bytes
                .set(gauge_value(waiting));
            let job = Dispatch { event, table };
            if self.dispatch.send(job).is_err() {
                self.backlog.fetch_sub(bytes, Ordering::AcqRel);
                tracing::error!("the live-query dispatcher is gone");
            }
        }
    }

    fn has_listeners(&self, def: &Arc<TableDef>) -> bool {
        self.tables
            .read()
            .get(&def.uid)
            .is_some_and(|t| t.lock().subscriptions.values().any(|l| !l.is_empty()))
    }
}

/// Subscriptions that see a commit alike: one user (`CURRENT_USER()`), one compiled
/// version, one column list, one predicate. Ten thousand clients in one chat room are one
/// shape, so the commit is evaluated and encoded once for all of them.
#[derive(Hash)]
struct Shape<'a> {
    user: &'a str,
    version: u32,
    columns: &'a [String],
    predicate: &'a str,
}

/// A [`Shape`] as 128 bits: two SipHash values of it under keys drawn at random when the
/// process starts. The dispatcher groups subscriptions by this id alone, without comparing
/// their shapes (doing so read each one's user, columns and predicate text: most of a
/// dispatch to 10,000 subscriptions), so equal ids must mean equal shapes, across users
/// too. With secret keys nobody can search for a collision (the ids never leave the
/// process), and a chance one among n shapes is about n² / 2^129. A table of ids would
/// be exact but costs memory per distinct shape, which 10,000 subscriptions with 10,000
/// filters pay in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ShapeId(u128);

impl ShapeId {
    fn of(user: &UserId, query: &CompiledQuery) -> Self {
        use std::hash::BuildHasher;
        static KEYS: OnceLock<[std::collections::hash_map::RandomState; 2]> = OnceLock::new();
        let [a, b] = KEYS.get_or_init(|| Default::default());
        let shape = Shape {
            user: user.as_str(),
            version: query.runtime.def().schema_version,
            columns: &query.column_names,
            predicate: &query.predicate_text,
        };
        ShapeId(u128::from(a.hash_one(&shape)) << 64 | u128::from(b.hash_one(&shape)))
    }
}

/// Evaluates one commit for the subscriptions of its partition and queues their messages;
/// `messages` counts them (one per subscription reached, grouped or not).
/// Delivers one change. A panic (a bug) must not end the dispatcher, which serves every
/// table: one in rendering for a query shape closes that shape's subscribers (in
/// `dispatch`); one anywhere else closes every connection listening on the change's
/// partition. Either way with 1011, to reconnect and resume with `from_seq`: the change is
/// in the log, and nobody silently misses it.
fn dispatch_or_close(job: &Dispatch, messages: &IntCounter) {
    let delivered =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(job, messages)));
    if delivered.is_ok() {
        return;
    }
    let seq = job.event.batch.seq;
    tracing::error!(
        seq,
        "delivering a change panicked; closing the connections of its partition"
    );
    let table = job.table.lock();
    let Some(listeners) = table.subscriptions.get(&job.event.batch.partition.prefix()) else {
        return;
    };
    for subscription in listeners.iter() {
        close_undelivered(subscription, seq);
    }
}

/// The dispatcher is more than `max` bytes of changes behind the commits (more are committed
/// than its subscriptions can be evaluated for): instead of evaluating this change, it
/// closes the connections it would reach with 4008. They resume with `from_seq` from the
/// table's log, which has the change; waiting on would let the delay of every notification
/// and the memory held for it grow without bound, and writers never wait for subscribers.
fn shed(job: &Dispatch, max: usize, metrics: &LiveMetrics) {
    metrics.dispatch_shed.inc();
    let seq = job.event.batch.seq;
    let table = job.table.lock();
    let Some(listeners) = table.subscriptions.get(&job.event.batch.partition.prefix()) else {
        return;
    };
    for subscription in listeners.iter().filter(|s| s.reached_by(seq)) {
        if !subscription.connection.is_closing() {
            subscription.connection.close(
                CLOSE_TOO_SLOW,
                format!(
                    "node fell behind: over {max} bytes of changes waiting; reconnect and \
                     resume with from_seq"
                ),
            );
        }
    }
}

/// A byte count as a gauge's value (saturating; no backlog comes near `i64::MAX`).
fn gauge_value(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// Closes the connection of a subscription that change `seq` could not be delivered to.
fn close_undelivered(subscription: &Subscription, seq: u64) {
    subscription.connection.close(
        CLOSE_INTERNAL,
        format!("internal error delivering change {seq}; reconnect and resume with from_seq"),
    );
}

fn dispatch(job: &Dispatch, messages: &IntCounter) {
    // Tests make a delivery panic here (FAILPOINTS=live-dispatch=panic).
    panic_point!("live-dispatch");
    let plans = match job
        .table
        .lock()
        .subscriptions
        .get_mut(&job.event.batch.partition.prefix())
    {
        Some(listeners) => listeners.plans(&job.event),
        None => return,
    };
    let mut items: Vec<&Item> = plans.iter().flat_map(|plan| &plan.items).collect();
    // Each plan is in order already; a connection's items from several lists are merged
    // (a group never spans lists: its members share one predicate, so one guard).
    if plans.len() > 1 {
        items.sort_unstable_by_key(|item| item.first().order());
    }
    let event = &job.event;
    let seq = event.batch.seq;
    // Each shape's rendering, built for the first subscription that has it; `None` when
    // building it panicked.
    let mut rendered: HashMap<ShapeId, Option<Vec<Rendered>>> = HashMap::new();
    let now = Utc::now().timestamp_micros();
    let mut sent = 0;
    for item in items {
        if let Item::One(subscription) = item {
            if !subscription.reached_by(seq) {
                continue;
            }
        }
        let first = item.first();
        let parts = rendered.entry(first.shape).or_insert_with(|| {
            // Rendering evaluates the subscription's filter with DataFusion: a panic there (a
            // bug) closes this shape's subscribers only; the others get the change.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                panic_point!("live-render");
                render(event, &first.query)
            }))
            .map_err(|_| tracing::error!(seq, "rendering a change for a live query panicked"))
            .ok()
        });
        let Some(parts) = parts else {
            match item {
                Item::One(subscription) => close_undelivered(subscription, seq),
                Item::Group { members, .. } => {
                    members.iter().for_each(|m| close_undelivered(m, seq));
                }
            }
            continue;
        };
        if parts.is_empty() {
            continue;
        }
        sent += match item {
            Item::One(subscription) => send(event, subscription, parts, now),
            Item::Group { members, head } => send_planned(event, members, head, parts, now),
        };
    }
    messages.inc_by(sent);
}

/// Queues a planned group's messages; returns how many subscription messages they stand
/// for. When a member is not reached (registered after the commit, gone) or still holds
/// its changes back (`initial_data` being read), the group is formed again from the members
/// that can take it, its frame at the place of the first of them, the others alone at
/// theirs.
fn send_planned(
    event: &ChangeEvent,
    members: &[Arc<Subscription>],
    head: &str,
    rendered: &[Rendered],
    now: i64,
) -> u64 {
    let seq = event.batch.seq;
    if members.iter().all(|m| m.reached_by(seq) && m.groupable()) {
        return send_group(event, members, head, rendered, now);
    }
    // Read once: `groupable` may turn true meanwhile.
    let reached: Vec<(&Arc<Subscription>, bool)> = members
        .iter()
        .filter(|m| m.reached_by(seq))
        .map(|m| (m, m.groupable()))
        .collect();
    let grouped: Vec<Arc<Subscription>> = reached
        .iter()
        .filter(|(_, groupable)| *groupable)
        .map(|(m, _)| Arc::clone(m))
        .collect();
    let mut sent = 0;
    let mut group_sent = false;
    for (member, groupable) in &reached {
        if !groupable {
            sent += send(event, member, rendered, now);
        } else if !group_sent {
            group_sent = true;
            sent += match grouped.as_slice() {
                [one] => send(event, one, rendered, now),
                members => send_group(event, members, &group_head(members.iter()), rendered, now),
            };
        }
    }
    sent
}

/// `{"type":"change_group","query_ids":[...],"change_type":"`, the start of the
/// `change_group` frames of `members` (see [`change_message`]). Members are named by
/// `query_id` alone: the client has each one's `live_id` from its `subscribed` (ADR 0022).
fn group_head<'a>(members: impl Iterator<Item = &'a Arc<Subscription>> + Clone) -> String {
    let length: usize = members.clone().map(|m| m.quoted.query_id().len() + 1).sum();
    let mut head = String::with_capacity(length + 64);
    head.push_str(r#"{"type":"change_group","query_ids":"#);
    for (i, member) in members.enumerate() {
        head.push_str(if i == 0 { "[" } else { "," });
        head.push_str(member.quoted.query_id());
    }
    head.push_str(r#"],"change_type":""#);
    head
}

/// Queues one `change_group` frame per rendered part for `members` (all of one connection,
/// all `group`, `head` naming them); returns how many subscription messages that stands
/// for.
fn send_group(
    event: &ChangeEvent,
    members: &[Arc<Subscription>],
    head: &str,
    rendered: &[Rendered],
    now: i64,
) -> u64 {
    let Some(first) = members.first() else {
        return 0;
    };
    for part in rendered {
        first
            .connection
            .send(change_message(&[head], part, event.batch.seq));
    }
    let parts = rendered.len() as u64;
    for member in members {
        member.counted(parts, now);
    }
    parts * members.len() as u64
}

/// The values of `column` in the rows of a commit (new and old images); `None` when the
/// commit's schema has no such column (then guards cannot rule anything out).
fn guard_values(event: &ChangeEvent, column: &str) -> Option<HashSet<GuardValue>> {
    let index = event
        .def
        .columns
        .iter()
        .position(|c| c.name.as_str() == column)?;
    let key = |v: Option<&Value>| match v {
        Some(Value::Text(s)) => Some(GuardValue::Text(s.clone())),
        Some(Value::Int(i)) => Some(GuardValue::Int(*i)),
        _ => None,
    };
    let mut out = HashSet::new();
    for row in &event.batch.rows {
        out.extend(key(row.new.get(index)));
        if let Some(old) = &row.old {
            out.extend(key(old.values.get(index)));
        }
    }
    Some(out)
}

/// Which rows of a batch a predicate matches (`None` matches all; NULL is no match).
fn matches(predicate: Option<&Arc<dyn PhysicalExpr>>, batch: &RecordBatch) -> Option<BooleanArray> {
    let predicate = predicate?;
    let result = predicate
        .evaluate(batch)
        .and_then(|v| v.into_array(batch.num_rows()));
    match result {
        Ok(array) => array
            .as_any()
            .downcast_ref::<BooleanArray>()
            .cloned()
            .or_else(|| Some(BooleanArray::from(vec![false; batch.num_rows()]))),
        Err(e) => {
            // A predicate that fails on a row (a cast of a bad value, an overflow) does not
            // match that row, rather than stopping the dispatcher; the batch's other rows
            // are evaluated one by one so that they still match.
            tracing::warn!(error = %e, "live-query predicate failed on a change batch");
            let one_by_one = (0..batch.num_rows())
                .map(|i| {
                    predicate
                        .evaluate(&batch.slice(i, 1))
                        .and_then(|v| v.into_array(1))
                        .ok()
                        .and_then(|a| {
                            a.as_any()
                                .downcast_ref::<BooleanArray>()
                                .map(|b| b.is_valid(0) && b.value(0))
                        })
                        .unwrap_or(false)
                })
                .collect::<Vec<bool>>();
            Some(BooleanArray::from(one_by_one))
        }
    }
}

fn is_true(mask: &Option<BooleanArray>, i: usize) -> bool {
    match mask {
        None => true,
        Some(m) => m.is_valid(i) && m.value(i),
    }
}

/// One message a commit renders to for a subscription shape, without its envelope.
struct Rendered {
    change_type: ChangeType,
    /// `rows` as JSON.
    rows: String,
    /// `old_values` as JSON (UPDATE only).
    old_values: Option<String>,
}

/// Evaluates one commit for one subscription shape: rows entering the filter as INSERT,
/// staying as UPDATE (with old values), leaving or deleted as DELETE.
fn render(event: &ChangeEvent, query: &CompiledQuery) -> Vec<Rendered> {
    let Some(images) = event.images_for(query.runtime.def()) else {
        return Vec::new();
    };
    let predicate = query.predicate.as_ref();
    let new_mask = matches(predicate, &images.new);
    let old_mask = if images.old.num_rows() > 0 {
        matches(predicate, &images.old)
    } else {
        None
    };
    let project = |row: &Row| -> Row {
        let mut out = Row::new();
        for name in query.column_names.iter() {
            if let Some(v) = row.get(name) {
                out.insert(name.clone(), v.clone());
            }
        }
        out
    };
    let mut inserts = Vec::new();
    let mut updates = Vec::new();
    let mut olds = Vec::new();
    let mut deletes = Vec::new();
    for (i, row) in event.batch.rows.iter().enumerate() {
        let new_in = !row.deleted && is_true(&new_mask, i);
        let old_in = match (images.old_of[i], &row.old) {
            (Some(j), Some(old)) => !old.deleted && is_true(&old_mask, j),
            _ => false,
        };
        match (old_in, new_in) {
            (false, true) => inserts.push(project(&images.new_json[i])),
            (true, true) => {
                updates.push(project(&images.new_json[i]));
                if let Some(j) = images.old_of[i] {
                    olds.push(project(&images.old_json[j]));
                }
            }
            (true, false) => {
                if let Some(j) = images.old_of[i] {
                    deletes.push(project(&images.old_json[j]));
                }
            }
            (false, false) => {}
        }
    }
    let mut out = Vec::new();
    for (change_type, rows, old_values) in [
        (ChangeType::Insert, inserts, None),
        (ChangeType::Update, updates, Some(olds)),
        (ChangeType::Delete, deletes, None),
    ] {
        if rows.is_empty() {
            continue;
        }
        let encoded = serde_json::to_string(&rows).and_then(|rows| {
            let old_values = old_values.map(|o| serde_json::to_string(&o)).transpose()?;
            Ok((rows, old_values))
        });
        match encoded {
            Ok((rows, old_values)) => out.push(Rendered {
                change_type,
                rows,
                old_values,
            }),
            Err(e) => tracing::error!(error = %e, "encoding a change message"),
        }
    }
    out
}

/// Queues the rendered messages of a commit to one subscription; returns how many.
fn send(event: &ChangeEvent, subscription: &Subscription, rendered: &[Rendered], now: i64) -> u64 {
    for part in rendered {
        subscription.deliver(change_message(
            &subscription.quoted.envelope(),
            part,
            event.batch.seq,
        ));
    }
    let sent = rendered.len() as u64;
    if sent > 0 {
        subscription.counted(sent, now);
    }
    sent
}

/// A subscription's `query_id` and `live_id` encoded as JSON strings, in one allocation.
#[derive(Debug)]
struct QuotedIds {
    text: String,
    split: usize,
}

impl QuotedIds {
    fn new(query_id: &str, live_id: &str) -> Self {
        // Encoding a string cannot fail.
        let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let mut text = quoted(query_id);
        let split = text.len();
        text.push_str(&quoted(live_id));
        QuotedIds { text, split }
    }

    fn query_id(&self) -> &str {
        &self.text[..self.split]
    }

    fn live_id(&self) -> &str {
        &self.text[self.split..]
    }

    /// `{"type":"change","query_id":...,"live_id":...,"change_type":"`, the start of the
    /// subscription's `change` messages (see [`change_message`]), in pieces.
    fn envelope(&self) -> [&str; 5] {
        [
            r#"{"type":"change","query_id":"#,
            self.query_id(),
            r#","live_id":"#,
            self.live_id(),
            r#","change_type":""#,
        ]
    }
}

/// `ServerMessage::Change` (or `ChangeGroup`) as JSON: the subscription's
/// [`QuotedIds::envelope`] (or a group's) around rows encoded once per shape, the same fields
/// in the same order as serde writes them (a test compares the two).
fn change_message(envelope: &[&str], part: &Rendered, seq: u64) -> String {
    use std::fmt::Write;
    let old_len = part.old_values.as_ref().map_or(0, |o| o.len() + 14);
    let head: usize = envelope.iter().map(|s| s.len()).sum();
    let mut out = String::with_capacity(head + part.rows.len() + old_len + 48);
    for piece in envelope {
        out.push_str(piece);
    }
    out.push_str(part.change_type.as_str());
    out.push_str(r#"","rows":"#);
    out.push_str(&part.rows);
    if let Some(old) = &part.old_values {
        out.push_str(r#","old_values":"#);
        out.push_str(old);
    }
    // Writing to a String cannot fail.
    let _ = write!(out, r#","seq":{seq}}}"#);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte bound counts what is queued and not yet taken: a message that does not fit
    /// beside the others closes the connection with 4008, one larger than the bound alone
    /// in the queue (a large `initial_data`) still goes, and taking messages off frees room.
    #[tokio::test]
    async fn the_queue_is_bounded_by_the_bytes_it_holds() {
        let hub = LiveHub::new(LiveSettings {
            node_id: "n1".into(),
            retention: Duration::from_secs(60),
            max_log_bytes: 1 << 20,
            queue_messages: 100,
            queue_bytes: 100,
            max_subscriptions: 10,
            max_dispatch_bytes: 1 << 20,
        })
        .unwrap();
        let principal = Principal {
            user_id: UserId::new("alice").unwrap(),
            role: crate::ids::Role::User,
        };
        let (connection, mut queue, close) = hub.connect(principal.clone());
        assert!(connection.send("a".repeat(60)), "fits");
        let taken = queue.recv().await.unwrap();
        connection.dequeued(&taken);
        assert!(connection.send("b".repeat(60)), "room again once taken");
        assert!(connection.send("c".repeat(40)), "100 bytes in all");
        assert!(close.borrow().is_none());
        assert!(!connection.send("d".to_string()), "101 bytes");
        let reason = close.borrow().clone().expect("closed");
        assert_eq!(reason.code, CLOSE_TOO_SLOW);
        assert!(reason.reason.contains("bytes queued"), "{}", reason.reason);
        // Room again, but nothing after a change that did not fit may reach the client:
        // it resumes from the last change it got.
        let taken = queue.recv().await.unwrap();
        connection.dequeued(&taken);
        assert!(
            !connection.send("g".to_string()),
            "closing: nothing more is queued"
        );
        assert!(
            queue.try_recv().is_ok(),
            "what was queued before the close stays"
        );
        assert!(queue.try_recv().is_err(), "and nothing after it");

        let (connection, _queue, close) = hub.connect(principal);
        assert!(connection.send("e".repeat(500)), "alone in the queue");
        assert!(!connection.send("f".to_string()), "nothing beside it");
        assert!(close.borrow().is_some());
    }

    #[test]
    fn change_messages_are_what_serde_writes() {
        let mut row = Row::new();
        row.insert("id".into(), serde_json::json!(7));
        row.insert(
            "text".into(),
            serde_json::json!("h\u{e9}llo \"quoted\" \\ \n"),
        );
        let mut old = Row::new();
        old.insert("id".into(), serde_json::json!(7));
        old.insert("text".into(), serde_json::Value::Null);
        for (change_type, old_values) in [
            (ChangeType::Insert, None),
            (ChangeType::Update, Some(vec![old.clone()])),
            (ChangeType::Delete, None),
        ] {
            let expected = serde_json::to_string(&ServerMessage::Change {
                query_id: "q\"1".into(),
                live_id: "alice-c1-messages-q\"1".into(),
                change_type,
                rows: vec![row.clone()],
                old_values: old_values.clone(),
                seq: 42,
            })
            .unwrap();
            let part = Rendered {
                change_type,
                rows: serde_json::to_string(&vec![row.clone()]).unwrap(),
                old_values: old_values.map(|o| serde_json::to_string(&o).unwrap()),
            };
            assert_eq!(
                change_message(
                    &QuotedIds::new("q\"1", "alice-c1-messages-q\"1").envelope(),
                    &part,
                    42
                ),
                expected
            );
        }
    }
}
