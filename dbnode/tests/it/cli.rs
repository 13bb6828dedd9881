//! The `kalam` CLI (crate `kalam-client`) against a real node: aligned tables, `--json`,
//! `KALAM_TOKEN`, errors on stderr with exit code 1, an unreachable node with exit code 2,
//! a wrong command line with 64;
//! `kalam subscribe` printing initial data and changes as they arrive, ending with exit
//! code 1 on an `error` (KILL LIVE QUERY, a refused query) and 0 on Ctrl-C.
//! The binary is built by `cargo test --workspace` next to `kalamdb`.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use serde_json::{json, Value};

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

    // A wrong command line is told apart from an unreachable node; help is not an error.
    let out = kalam(node.url(), Some(&alice), &["sql", "SELECT 1", "--bogus"]).await;
    assert_eq!(out.status.code(), Some(64), "usage: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--bogus"),
        "{}",
        text(&out.stderr)
    );
    let out = kalam(node.url(), None, &["--help"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Usage"), "{}", text(&out.stdout));
}

/// A running `kalam subscribe` whose stdout is read line by line.
struct Subscriber {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Subscriber {
    fn spawn(url: &str, token: &str, args: &[&str]) -> Subscriber {
        let mut child = tokio::process::Command::new(kalam_binary())
            .arg("--url")
            .arg(url)
            .arg("subscribe")
            .args(args)
            .env_remove("KALAM_URL")
            .env("KALAM_TOKEN", token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawning kalam subscribe");
        let stdout = child.stdout.take().expect("piped stdout");
        Subscriber {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next line kalam prints, within 10 s.
    async fn line(&mut self) -> String {
        match tokio::time::timeout(Duration::from_secs(10), self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => panic!("kalam subscribe ended its output early"),
            Ok(Err(e)) => panic!("reading kalam's stdout: {e}"),
            Err(_) => panic!("kalam subscribe printed nothing within 10 s"),
        }
    }

    /// Waits for the process to end (within 10 s) and returns its exit code and stderr.
    async fn exit(mut self) -> (Option<i32>, String) {
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("kalam subscribe exits within 10 s")
            .expect("waiting for kalam");
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            use tokio::io::AsyncReadExt as _;
            let _ = err.read_to_string(&mut stderr).await;
        }
        (status.code(), stderr)
    }
}

/// The JSON row at the end of a change line such as `INSERT seq=7 {"id":1,...}`.
fn row_of(line: &str) -> Value {
    let start = line
        .find('{')
        .unwrap_or_else(|| panic!("no row in {line:?}"));
    let end = line.find(" (was ").unwrap_or(line.len());
    serde_json::from_str(&line[start..end]).unwrap_or_else(|e| panic!("row of {line:?}: {e}"))
}

#[tokio::test]
async fn kalam_subscribe_prints_initial_data_and_changes_as_they_arrive() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);
    node.exec(&alice, "INSERT INTO app.messages (id, conversation_id, content) VALUES (1, 'c1', 'old'), (2, 'c1', 'newest before'), (3, 'c2', 'other conversation')")
        .await;

    let mut sub = Subscriber::spawn(
        node.url(),
        &alice,
        &[
            "SELECT id, content FROM app.messages WHERE conversation_id = 'c1'",
            "--last-rows",
            "1",
            "--query-id",
            "cli",
        ],
    );
    let subscribed = sub.line().await;
    assert!(
        subscribed.starts_with("subscribed live_id=alice-")
            && subscribed.ends_with("-messages-cli"),
        "{subscribed}"
    );
    let live_id = subscribed["subscribed live_id=".len()..].to_string();
    let initial = sub.line().await;
    assert!(
        initial.starts_with("initial_data seq=") && initial.ends_with(" rows=1"),
        "{initial}"
    );
    assert_eq!(
        row_of(&sub.line().await),
        json!({"id": 2, "content": "newest before"})
    );

    // A change that does not match is never printed; the matching ones arrive in order.
    node.exec(
        &alice,
        "INSERT INTO app.messages (id, conversation_id, content) VALUES (4, 'c2', 'noise')",
    )
    .await;
    node.exec(
        &alice,
        "INSERT INTO app.messages (id, conversation_id, content) VALUES (5, 'c1', 'live')",
    )
    .await;
    let insert = sub.line().await;
    assert!(insert.starts_with("INSERT seq="), "{insert}");
    assert_eq!(row_of(&insert), json!({"id": 5, "content": "live"}));
    node.exec(
        &alice,
        "UPDATE app.messages SET content = 'edited' WHERE id = 5",
    )
    .await;
    let update = sub.line().await;
    assert!(update.starts_with("UPDATE seq="), "{update}");
    assert_eq!(row_of(&update), json!({"id": 5, "content": "edited"}));
    assert!(
        update.ends_with(r#"(was {"id":5,"content":"live"})"#),
        "{update}"
    );

    // KILL LIVE QUERY reaches the CLI as an error; it exits with code 1.
    node.exec(&alice, &format!("KILL LIVE QUERY {}", lit(&live_id)))
        .await;
    let error = sub.line().await;
    assert!(error.starts_with("error LIVE_QUERY_KILLED"), "{error}");
    let (code, stderr) = sub.exit().await;
    assert_eq!(code, Some(1), "exit code after KILL; stderr: {stderr}");
}

#[tokio::test]
async fn kalam_subscribe_reports_a_refused_query_and_stops_on_ctrl_c() {
    let node = TestNode::start().await;
    node.create_chat_schema().await;
    let alice = token("alice", false);

    let mut refused = Subscriber::spawn(
        node.url(),
        &alice,
        &["SELECT conversation_id, COUNT(*) FROM app.messages GROUP BY conversation_id"],
    );
    let line = refused.line().await;
    assert!(line.starts_with("error INVALID_QUERY"), "{line}");
    let (code, stderr) = refused.exit().await;
    assert_eq!(code, Some(1), "stderr: {stderr}");

    let mut sub = Subscriber::spawn(node.url(), &alice, &["SELECT * FROM app.messages"]);
    assert!(sub.line().await.starts_with("subscribed live_id="));
    node.wait_live_queries(&alice, Duration::from_secs(5), "one subscription", |rows| {
        rows.len() == 1
    })
    .await;
    let pid = sub.child.id().expect("kalam is running") as libc::pid_t;
    // SAFETY: kill(2) on the pid of a child this test spawned and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let (code, stderr) = sub.exit().await;
    assert_eq!(code, Some(0), "Ctrl-C exits 0; stderr: {stderr}");
    // A clean close removes the subscription at once.
    node.wait_live_queries(&alice, Duration::from_secs(2), "no subscription", |rows| {
        rows.is_empty()
    })
    .await;
}

/// `kalamdb --version` says when the binary is a debug build, which the load tool records
/// with its numbers (its full mode warns about one).
#[test]
fn kalamdb_version_names_a_debug_build() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kalamdb"))
        .arg("--version")
        .output()
        .expect("running kalamdb --version");
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let version = text(&out.stdout);
    assert!(
        version.starts_with(concat!("kalamdb ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    // The tests and the node they run are built with the same profile.
    assert_eq!(
        version.contains("(debug build)"),
        cfg!(debug_assertions),
        "{version}"
    );
}
