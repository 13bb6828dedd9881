//! The wire types of `GET /ws` (API.md section 5): the JSON text frames a client and a node
//! exchange for live queries. The node serialises with these very types and the client
//! parses them, like [`crate::wire`] for `POST /api/sql`.

use serde::{Deserialize, Serialize};

use crate::wire::Row;

/// WebSocket close code: the first-message authentication failed or timed out.
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
/// WebSocket close code: the client did not keep up and its queue overflowed; reconnect
/// and resume with `from_seq`.
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// WebSocket close code: the client sent frames that are not valid JSON messages of the
/// protocol too many times, or a binary frame.
pub const CLOSE_PROTOCOL: u16 = 1008;
/// The node could not deliver a change to the connection (a bug on its side, logged there);
/// reconnect and resume with `from_seq`, nothing was skipped.
pub const CLOSE_INTERNAL: u16 = 1011;

/// Options of one subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionOptions {
    /// Send the newest `last_rows` matching rows first, as `initial_data` (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rows: Option<u64>,
    /// Resume: deliver every matching change with `seq > from_seq`, then continue live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_seq: Option<u64>,
    /// Take this subscription's changes in `change_group` frames: one frame per commit for
    /// all the subscriptions of the connection that asked for it and see the commit alike
    /// (same table, columns and filter). [`crate::LiveConnection`] splits such a frame into
    /// one [`ServerMessage::Change`] per subscription, so this only saves work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<bool>,
}

/// One subscription of a `subscribe` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// Unique per connection; names the subscription in every message about it.
    pub query_id: String,
    /// `SELECT <columns> FROM <table> [WHERE <predicate>]`.
    pub sql: String,
    #[serde(default)]
    pub options: SubscriptionOptions,
}

/// Client to server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Authenticates a connection opened without a token (must be the first message,
    /// within 5 seconds).
    Auth {
        token: String,
    },
    Subscribe {
        subscriptions: Vec<Subscription>,
    },
    Unsubscribe {
        query_id: String,
    },
    Ping,
}

/// The kind of a `change` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ChangeType {
    /// A row that starts matching (new, or changed into the filter).
    Insert,
    /// A row that keeps matching; `old_values` holds its previous values.
    Update,
    /// A row that stops matching or was deleted; `rows` holds its last matching values.
    Delete,
}

impl ChangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Insert => "INSERT",
            ChangeType::Update => "UPDATE",
            ChangeType::Delete => "DELETE",
        }
    }
}

/// Server to client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The subscription is registered: every write completed after this is delivered.
    Subscribed {
        query_id: String,
        live_id: String,
    },
    /// The newest `last_rows` matching rows, oldest first, read at or after `seq`.
    InitialData {
        query_id: String,
        live_id: String,
        rows: Vec<Row>,
        seq: u64,
    },
    Change {
        query_id: String,
        live_id: String,
        change_type: ChangeType,
        rows: Vec<Row>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        old_values: Option<Vec<Row>>,
        seq: u64,
    },
    /// One change for several subscriptions of the connection (all with option `group`),
    /// named by `query_id` (each one's `live_id` came with its `subscribed`). Read through
    /// [`crate::LiveConnection::next`] it arrives as one [`ServerMessage::Change`] per
    /// subscription.
    ChangeGroup {
        query_ids: Vec<String>,
        change_type: ChangeType,
        rows: Vec<Row>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        old_values: Option<Vec<Row>>,
        seq: u64,
    },
    Pong,
    /// A subscription (named by `query_id`) or the connection failed; `code` is one of the
    /// stable codes of [`crate::wire::ErrorCode`].
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        query_id: Option<String>,
        code: crate::wire::ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        details: Option<String>,
    },
}

impl ServerMessage {
    /// Parses one message of the node. A `change` or `change_group` (nearly all of the
    /// traffic) is read in one pass straight into its fields; serde's path for an internally
    /// tagged enum first buffers the whole message, rows included, into an intermediate tree
    /// and then decodes that again. Anything else, or a change the direct path cannot read,
    /// goes the general way, so the result (and any error) is what `serde_json::from_str`
    /// gives.
    pub fn from_json(text: &str) -> serde_json::Result<Self> {
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum Tag {
            Change,
            ChangeGroup,
        }
        /// A `change` or a `change_group`: each names its subscriptions one way.
        #[derive(Deserialize)]
        struct Change {
            #[serde(rename = "type")]
            tag: Tag,
            query_id: Option<String>,
            live_id: Option<String>,
            query_ids: Option<Vec<String>>,
            change_type: ChangeType,
            rows: Vec<Row>,
            #[serde(default)]
            old_values: Option<Vec<Row>>,
            seq: u64,
        }
        let fast = serde_json::from_str::<Change>(text).ok().and_then(|c| {
            let Change {
                change_type,
                rows,
                old_values,
                seq,
                ..
            } = c;
            match (c.tag, c.query_id, c.live_id, c.query_ids) {
                (Tag::Change, Some(query_id), Some(live_id), None) => Some(ServerMessage::Change {
                    query_id,
                    live_id,
                    change_type,
                    rows,
                    old_values,
                    seq,
                }),
                (Tag::ChangeGroup, None, None, Some(query_ids)) => {
                    Some(ServerMessage::ChangeGroup {
                        query_ids,
                        change_type,
                        rows,
                        old_values,
                        seq,
                    })
                }
                _ => None,
            }
        });
        match fast {
            Some(message) => Ok(message),
            None => serde_json::from_str(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_have_api_md_shape() {
        let text = r#"{"type": "subscribe", "subscriptions": [
           {"query_id": "msgs", "sql": "SELECT * FROM app.messages WHERE conversation_id = 'c1'",
            "options": {"last_rows": 50}}]}"#;
        let ClientMessage::Subscribe { subscriptions } = serde_json::from_str(text).unwrap() else {
            panic!("not a subscribe")
        };
        assert_eq!(subscriptions[0].options.last_rows, Some(50));
        assert_eq!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"ping"}"#).unwrap(),
            ClientMessage::Ping
        );
        assert_eq!(
            serde_json::to_string(&ClientMessage::Unsubscribe {
                query_id: "msgs".into()
            })
            .unwrap(),
            r#"{"type":"unsubscribe","query_id":"msgs"}"#
        );
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"subscribe"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(
            r#"{"type":"subscribe","subscriptions":[{"query_id":"a","sql":"x","options":{"bogus":1}}]}"#
        )
        .is_err());
    }

    #[test]
    fn server_messages_have_api_md_shape() {
        let text = r#"{"type": "change", "query_id": "msgs", "live_id": "l", "change_type": "UPDATE", "rows": [{"id": 1}], "old_values": [{"id": 1}], "seq": 57}"#;
        let parsed: ServerMessage = serde_json::from_str(text).unwrap();
        let ServerMessage::Change {
            change_type, seq, ..
        } = &parsed
        else {
            panic!("not a change")
        };
        assert_eq!((*change_type, *seq), (ChangeType::Update, 57));
        let insert = ServerMessage::Change {
            query_id: "q".into(),
            live_id: "l".into(),
            change_type: ChangeType::Insert,
            rows: vec![],
            old_values: None,
            seq: 1,
        };
        let json = serde_json::to_value(&insert).unwrap();
        assert_eq!(json["change_type"], "INSERT");
        assert!(json.get("old_values").is_none());
        let err: ServerMessage = serde_json::from_str(
            r#"{"type":"error","query_id":"msgs","code":"INVALID_QUERY","message":"m","details":"d"}"#,
        )
        .unwrap();
        assert!(
            matches!(err, ServerMessage::Error { code, .. } if code == crate::wire::ErrorCode::InvalidQuery)
        );
    }

    #[test]
    fn from_json_reads_every_message_as_serde_does() {
        let texts = [
            r#"{"type":"change","query_id":"q","live_id":"l","change_type":"INSERT","rows":[{"id":1,"t":"a\"b"}],"seq":4}"#,
            r#"{"type":"change","query_id":"q","live_id":"l","change_type":"UPDATE","rows":[{"id":1}],"old_values":[{"id":0}],"seq":5}"#,
            r#"{"seq":6,"rows":[],"change_type":"DELETE","live_id":"l","query_id":"q","type":"change","extra":true}"#,
            r#"{"type":"change","query_id":"q","live_id":"l","change_type":"INSERT","rows":[],"old_values":null,"seq":7}"#,
            r#"{"type":"change_group","query_ids":["a","b"],"change_type":"INSERT","rows":[{"id":1}],"seq":8}"#,
            r#"{"type":"change_group","query_ids":["a"],"change_type":"UPDATE","rows":[{"id":1}],"old_values":[{"id":0}],"seq":9}"#,
            r#"{"type":"subscribed","query_id":"q","live_id":"l"}"#,
            r#"{"type":"initial_data","query_id":"q","live_id":"l","rows":[{"id":1}],"seq":3}"#,
            r#"{"type":"pong"}"#,
            r#"{"type":"error","code":"RESUME_GAP","message":"m"}"#,
        ];
        for text in texts {
            let expected: ServerMessage = serde_json::from_str(text).unwrap();
            assert_eq!(ServerMessage::from_json(text).unwrap(), expected, "{text}");
        }
        for bad in [
            r#"{"type":"change","query_id":"q"}"#,
            r#"{"type":"change","query_ids":["q"],"change_type":"INSERT","rows":[],"seq":1}"#,
            r#"{"type":"change_group","query_id":"q","live_id":"l","change_type":"INSERT","rows":[],"seq":1}"#,
            r#"{"type":"change","query_id":"q","live_id":"l","change_type":"UPSERT","rows":[],"seq":1}"#,
            r#"{"type":"bogus"}"#,
            "not json",
        ] {
            assert!(ServerMessage::from_json(bad).is_err(), "{bad}");
        }
    }
}
