//! The `kalam` CLI (crate `kalam-client`) against a real node: aligned tables, `--json`,
//! `KALAM_TOKEN`, errors on stderr with exit code 1, an unreachable node with exit code 2.
//! The binary is built by `cargo test --workspace` next to `kalamdb`.

use std::path::PathBuf;
use std::process::Output;

use serde_json::Value;

use crate::harness::*;

fn kalam_binary() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_kalamdb")).with_file_name("kalam");
    assert!(
        path.exists(),
        "{} is missing: run the workspace's tests (cargo test --workspace), which build it",
        path.display()
    );
    path
}

async fn kalam(url: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(kalam_binary());
    cmd.arg("--url")
        .arg(url)
        .args(args)
        .env_remove("KALAM_TOKEN")
        .env_remove("KALAM_URL");
    if let Some(t) = token {
        cmd.env("KALAM_TOKEN", t);
    }
    cmd.output().await.expect("running kalam")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

#[tokio::test]
async fn kalam_sql_prints_tables_json_and_errors() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);
    node.exec(&alice, "INSERT INTO app.messages (id, conversation_id, content) VALUES (1, 'c1', 'héllo'), (22, 'c1', NULL)")
        .await;

    let out = kalam(
        node.url(),
        Some(&alice),
        &["sql", "SELECT id, content FROM app.messages ORDER BY id"],
    )
    .await;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "id | content", "header: {stdout}");
    assert_eq!(lines[1], "---+--------", "separator: {stdout}");
    assert_eq!(lines[2], " 1 | héllo", "{stdout}");
    assert_eq!(lines[3], "22 | NULL", "{stdout}");
    assert!(stdout.contains("(2 rows)"), "{stdout}");

    let out = kalam(
        node.url(),
        Some(&alice),
        &["--json", "sql", "SELECT COUNT(*) AS n FROM app.messages"],
    )
    .await;
    assert!(out.status.success());
    let body: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(body["results"][0]["rows"][0]["n"], 2);

    let out = kalam(node.url(), Some(&alice), &["sql", "DROP NAMESPACE app"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("FORBIDDEN"),
        "{}",
        text(&out.stderr)
    );

    let out = kalam(node.url(), None, &["sql", "SELECT 1"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("UNAUTHORIZED") && stderr.contains("kalamdb token"),
        "{stderr}"
    );

    let out = kalam("http://127.0.0.1:9", Some(&alice), &["sql", "SELECT 1"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "unreachable node: {}",
        text(&out.stderr)
    );
}
