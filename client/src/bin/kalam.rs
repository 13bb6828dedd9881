//! `kalam`: the command-line client of a KalamDB node.
//!
//! Argument parsing and printing only; talking to the node and rendering results live in the
//! `kalam_client` library. Exit codes: 0 success, 1 the node answered with an error,
//! 2 the node could not be reached (or did not answer like a KalamDB node).

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kalam_client::{table, ClientError, KalamClient};

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
    /// Print the node's JSON response (pretty) instead of tables.
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
}

const EXIT_API_ERROR: u8 = 1;
const EXIT_UNREACHABLE: u8 = 2;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
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

fn failure(client: &KalamClient, error: &ClientError) -> ExitCode {
    match error {
        ClientError::Api { error, .. } => {
            eprint!("{}", table::render_error(error));
            ExitCode::from(EXIT_API_ERROR)
        }
        ClientError::Http(_) if error.is_connect() => {
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
