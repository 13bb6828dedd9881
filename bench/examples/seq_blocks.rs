//! Sequential single-row INSERTs against a running node, reported per block of 500 in the
//! order they ran: shows whether a fresh node's first writes are slower than its later ones.
//!
//! ```text
//! cargo run --release -p kalam-bench --example seq_blocks -- http://127.0.0.1:18080 \
//!     "$(kalamdb token --user root --admin --data-dir /tmp/sb)" \
//!     "$(kalamdb token --user alice --data-dir /tmp/sb)"
//! ```

use std::time::Instant;

use anyhow::Context;
use hdrhistogram::Histogram;
use kalam_client::KalamClient;
use serde_json::json;

const BLOCKS: usize = 10;
const PER_BLOCK: usize = 500;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, admin, user] = args.as_slice() else {
        anyhow::bail!("usage: seq_blocks <node url> <admin token> <user token>");
    };
    let admin = KalamClient::new(url)?.with_token(admin.clone());
    admin.sql("CREATE NAMESPACE IF NOT EXISTS sb").await?;
    admin
        .sql("CREATE USER TABLE IF NOT EXISTS sb.t (content TEXT)")
        .await?;
    let client = KalamClient::new(url)?.with_token(user.clone());
    for block in 0..BLOCKS {
        let mut h = Histogram::<u64>::new(3)?;
        for i in 0..PER_BLOCK {
            let started = Instant::now();
            client
                .sql_params(
                    "INSERT INTO sb.t (content) VALUES ($1)",
                    vec![json!(format!("message {block} {i}"))],
                )
                .await
                .context("INSERT")?;
            h.saturating_record(started.elapsed().as_micros() as u64);
        }
        println!(
            "block {block}: p50 {} p90 {} p99 {} max {} us",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.max()
        );
    }
    Ok(())
}
