//! `kalam`: the command-line client of a KalamDB node.
//!
//! Argument parsing and printing only; talking to the node and rendering results live in the
//! `kalam_client` library. Exit codes: 0 success, 1 the node answered with an error,
//! 2 the node could not be reached (or did not answer like a KalamDB node), 64 the command
//! line is wrong (BSD's `EX_USAGE`; clap's own 2 would read as "unreachable").
//!
//! `kalam subscribe` prints live messages until Ctrl-C (exit 0) or until the node closes the
//! connection: exit 0 on a normal close, 1 on an `error` message or a close for a reason
//! (4008 too slow, 4401 unauthorized, ...), 2 when the connection fails or cannot be opened.

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kalam_client::wire::Row;
use kalam_client::{
    table, ClientError, KalamClient, RawServerMessage, ServerMessage, Subscription,
    SubscriptionOptions, DEFAULT_QUERY_ID,
};

#[derive(Debug, Parser)]
#[command(
    name = "kalam",
    version,
    about = "Command-line client of a KalamDB node"
)]
struct Cli {
    /// Base URL of the node.
    #[arg(
        long,
        env = "KALAM_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// Bearer token (JWT); `kalamdb token --user <id>` prints one for a local node.
    #[arg(long, env = "KALAM_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the node's JSON response (pretty) instead of tables; `subscribe` prints each
    /// live message as one JSON line.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one or more SQL statements separated by `;`.
    Sql {
        /// The statements, e.g. "SELECT * FROM app.messages LIMIT 10".
        sql: String,
        /// Admin only: run the statements on behalf of this user.
        #[arg(long)]
        as_user: Option<String>,
    },
    /// Subscribe to a live query and print every message as it arrives, until Ctrl-C.
    Subscribe {
        /// The live query: `SELECT <columns> FROM <table> [WHERE <predicate>]`.
        sql: String,
        /// First send the newest N matching rows (`initial_data`).
        #[arg(long, value_name = "N")]
        last_rows: Option<u64>,
        /// Resume: deliver every matching change with a sequence number above N, then go on live.
        #[arg(long, value_name = "N")]
        from_seq: Option<u64>,
        /// The subscription's name in the node's messages and in `system.live_queries`.
        #[arg(long, value_name = "ID", default_value = DEFAULT_QUERY_ID)]
        query_id: String,
    },
}

const EXIT_API_ERROR: u8 = 1;
const EXIT_UNREACHABLE: u8 = 2;
const EXIT_USAGE: u8 = 64;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `--help` and `--version` are not errors: printed, exit 0.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let client = match KalamClient::new(cli.url.as_str()) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("kalam: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let client = match cli.token.filter(|t| !t.trim().is_empty()) {
        Some(token) => client.with_token(token.trim()),
        None => {
            eprintln!(
                "kalam: no token given, the node will answer 401.\n\
                 hint: run `kalamdb token --user <id>` and `export KALAM_TOKEN=<token>` \
                 (or pass --token)"
            );
            client
        }
    };

    match cli.command {
        Command::Sql { sql, as_user } => run_sql(&client, &sql, as_user.as_deref(), cli.json).await,
        Command::Subscribe {
            sql,
            last_rows,
            from_seq,
            query_id,
        } => {
            let subscription = Subscription {
                query_id,
                sql,
                options: SubscriptionOptions {
                    last_rows,
                    from_seq,
                    group: None,
                },
            };
            run_subscribe(&client, subscription, cli.json).await
        }
    }
}

async fn run_sql(client: &KalamClient, sql: &str, as_user: Option<&str>, json: bool) -> ExitCode {
    if json {
        return match client.sql_raw(sql, as_user).await {
            Ok(raw) => {
                let text = serde_json::to_string_pretty(&raw.body)
                    .unwrap_or_else(|_| raw.body.to_string());
                print_stdout(&format!("{text}\n"));
                if raw.is_error() {
                    ExitCode::from(EXIT_API_ERROR)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => failure(client, &e),
        };
    }
    match client.sql_as(sql, as_user).await {
        Ok(success) => {
            print_stdout(&table::render_success(&success));
            ExitCode::SUCCESS
        }
        Err(e) => failure(client, &e),
    }
}

/// What ended the wait for the next live message.
enum LiveEvent {
    /// Ctrl-C, or (`false`) the handler could not be installed.
    CtrlC(bool),
    Next(Option<Result<RawServerMessage, ClientError>>),
}

async fn run_subscribe(client: &KalamClient, subscription: Subscription, json: bool) -> ExitCode {
    let mut live = match client.live().await {
        Ok(live) => live,
        Err(e) => return failure(client, &e),
    };
    if let Err(e) = live.subscribe(vec![subscription]).await {
        return failure(client, &e);
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // Cleared when the handler could not be installed: the finished future must not be
    // polled again, and the run goes on without it.
    let mut watch_ctrl_c = true;
    loop {
        let event = tokio::select! {
            signal = &mut ctrl_c, if watch_ctrl_c => LiveEvent::CtrlC(signal.is_ok()),
            next = live.next_raw() => LiveEvent::Next(next),
        };
        let raw = match event {
            LiveEvent::CtrlC(true) => {
                let _ = live.close().await;
                return ExitCode::SUCCESS;
            }
            LiveEvent::CtrlC(false) => {
                watch_ctrl_c = false;
                continue;
            }
            LiveEvent::Next(None) => return ExitCode::SUCCESS,
            LiveEvent::Next(Some(Ok(raw))) => raw,
            LiveEvent::Next(Some(Err(e))) => return live_failure(client, &e),
        };
        if json {
            print_stdout(&json_line(&raw.text));
        } else {
            print_stdout(&human_lines(&raw.message));
        }
        // The connection carries this one subscription: an error about it (or about the
        // connection) leaves nothing to wait for.
        if matches!(raw.message, ServerMessage::Error { .. }) {
            let _ = live.close().await;
            return ExitCode::from(EXIT_API_ERROR);
        }
    }
}

/// One line per message however the node formatted it (it sends compact JSON already).
fn json_line(text: &str) -> String {
    let compact = serde_json::from_str::<serde_json::Value>(text)
        .map(|value| value.to_string())
        .unwrap_or_else(|_| text.replace('\n', " "));
    format!("{compact}\n")
}

/// The human form of a message: one line each, rows as JSON objects.
fn human_lines(message: &ServerMessage) -> String {
    let row = |r: &Row| serde_json::to_string(r).unwrap_or_default();
    match message {
        ServerMessage::Subscribed { live_id, .. } => format!("subscribed live_id={live_id}\n"),
        ServerMessage::InitialData { rows, seq, .. } => {
            let mut out = format!("initial_data seq={seq} rows={}\n", rows.len());
            for r in rows {
                out.push_str(&row(r));
                out.push('\n');
            }
            out
        }
        // A group never reaches here (the connection splits it), but reads the same.
        ServerMessage::Change {
            change_type,
            rows,
            old_values,
            seq,
            ..
        }
        | ServerMessage::ChangeGroup {
            change_type,
            rows,
            old_values,
            seq,
            ..
        } => {
            let mut out = String::new();
            for (i, r) in rows.iter().enumerate() {
                out.push_str(&format!("{} seq={seq} {}", change_type.as_str(), row(r)));
                if let Some(old) = old_values.as_ref().and_then(|old| old.get(i)) {
                    out.push_str(&format!(" (was {})", row(old)));
                }
                out.push('\n');
            }
            out
        }
        ServerMessage::Pong => "pong\n".to_string(),
        ServerMessage::Error {
            code,
            message,
            details,
            ..
        } => match details {
            Some(details) => format!("error {code}: {message} ({details})\n"),
            None => format!("error {code}: {message}\n"),
        },
    }
}

/// How a live connection ended, when it was not by Ctrl-C.
fn live_failure(client: &KalamClient, error: &ClientError) -> ExitCode {
    match error {
        ClientError::Closed { .. } if error.is_normal_close() => {
            eprintln!("kalam: {error}");
            ExitCode::SUCCESS
        }
        ClientError::Closed { .. } => {
            eprintln!("kalam: {error}");
            ExitCode::from(EXIT_API_ERROR)
        }
        _ => failure(client, error),
    }
}

fn failure(client: &KalamClient, error: &ClientError) -> ExitCode {
    match error {
        ClientError::Api { error, .. } => {
            eprint!("{}", table::render_error(error));
            ExitCode::from(EXIT_API_ERROR)
        }
        _ if error.is_connect() => {
            eprintln!(
                "kalam: cannot connect to KalamDB at {}: {}\n\
                 hint: is dbnode running? (set --url or KALAM_URL)",
                client.base_url(),
                error.with_causes()
            );
            ExitCode::from(EXIT_UNREACHABLE)
        }
        _ => {
            eprintln!(
                "kalam: request to {} failed: {}",
                client.base_url(),
                error.with_causes()
            );
            ExitCode::from(EXIT_UNREACHABLE)
        }
    }
}

/// Writes without panicking when stdout is closed early (`kalam sql ... | head`).
fn print_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_lines_show_one_row_per_line() {
        let change: ServerMessage = serde_json::from_str(
            r#"{"type":"change","query_id":"q1","live_id":"l","change_type":"UPDATE",
                "rows":[{"id":1,"t":"b"}],"old_values":[{"id":1,"t":"a"}],"seq":57}"#,
        )
        .expect("a change message");
        assert_eq!(
            human_lines(&change),
            "UPDATE seq=57 {\"id\":1,\"t\":\"b\"} (was {\"id\":1,\"t\":\"a\"})\n"
        );
        let initial: ServerMessage = serde_json::from_str(
            r#"{"type":"initial_data","query_id":"q1","live_id":"l","rows":[{"id":1},{"id":2}],"seq":41}"#,
        )
        .expect("an initial_data message");
        assert_eq!(
            human_lines(&initial),
            "initial_data seq=41 rows=2\n{\"id\":1}\n{\"id\":2}\n"
        );
        assert_eq!(json_line("{\"type\":\n\"pong\"}"), "{\"type\":\"pong\"}\n");
    }
}
