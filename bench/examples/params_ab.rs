//! A/B of one single-row INSERT written two ways against a running node, in alternating
//! blocks of 1,000 on one connection: the value inline in the SQL text (parsed every time) and
//! as `$1` with `params` (the text parsed once, ADR 0032). Prints p50/p90/p99 of each.
//!
//! ```text
//! kalamdb serve --listen 127.0.0.1:18080 --data-dir /tmp/ab &
//! cargo run --release -p kalam-bench --example params_ab -- http://127.0.0.1:18080 \
//!     "$(kalamdb token --user root --admin --data-dir /tmp/ab)" \
//!     "$(kalamdb token --user alice --data-dir /tmp/ab)"
//! ```

use std::time::Instant;

use anyhow::Context;
use hdrhistogram::Histogram;
use kalam_client::KalamClient;
use serde_json::json;

const BLOCKS: usize = 20;
const PER_BLOCK: usize = 1000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, admin, user] = args.as_slice() else {
        anyhow::bail!("usage: params_ab <node url> <admin token> <user token>");
    };
    let admin = KalamClient::new(url)?.with_token(admin.clone());
    admin.sql("CREATE NAMESPACE IF NOT EXISTS ab").await?;
    admin
        .sql("CREATE USER TABLE IF NOT EXISTS ab.t (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), content TEXT)")
        .await?;
    let client = KalamClient::new(url)?.with_token(user.clone());
    let mut inline = Histogram::<u64>::new(3)?;
    let mut params = Histogram::<u64>::new(3)?;
    for block in 0..BLOCKS {
        for i in 0..PER_BLOCK {
            let content = format!("message {block} {i}");
            let started = Instant::now();
            let h = if block % 2 == 0 {
                client
                    .sql(&format!("INSERT INTO ab.t (content) VALUES ('{content}')"))
                    .await
                    .context("inline INSERT")?;
                &mut inline
            } else {
                client
                    .sql_params(
                        "INSERT INTO ab.t (content) VALUES ($1)",
                        vec![json!(content)],
                    )
                    .await
                    .context("INSERT with params")?;
                &mut params
            };
            h.saturating_record(started.elapsed().as_micros() as u64);
        }
    }
    for (name, h) in [("inline", &inline), ("params", &params)] {
        println!(
            "{name}: p50 {} us, p90 {} us, p99 {} us, mean {:.1} us ({} INSERTs)",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.mean(),
            h.len()
        );
    }
    Ok(())
}
