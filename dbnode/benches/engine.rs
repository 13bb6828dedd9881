//! Criterion benchmarks of the engine path (parse, plan, RocksDB write or scan, encode),
//! without HTTP: what `execution_time_ms` measures. Under `cargo test` (no `--bench` flag)
//! each runs once on small data as a smoke test.

use std::sync::Arc;

use criterion::{criterion_group, Criterion};
use kalam_dbnode::auth::Principal;
use kalam_dbnode::config::Config;
use kalam_dbnode::ids::{Role, UserId};
use kalam_dbnode::node::Node;
use kalam_dbnode::sql::parser::parse_statements;
use kalam_dbnode::sql::provider::RequestContext;

fn ctx(user: &str, role: Role) -> Arc<RequestContext> {
    let user_id = UserId::new(user).expect("valid user id");
    Arc::new(RequestContext::new(
        Principal {
            user_id: user_id.clone(),
            role,
        },
        user_id,
    ))
}

async fn run(node: &Node, ctx: &Arc<RequestContext>, sql: &str) -> kalam_client::wire::QueryResult {
    let (mut stmts, err) = parse_statements(sql);
    assert!(err.is_none(), "{sql}: {err:?}");
    let mut last = None;
    for s in stmts.drain(..) {
        last = Some(
            node.executor
                .execute(ctx, s)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        );
    }
    last.expect("one statement")
}

fn engine(c: &mut Criterion) {
    let full = std::env::args().any(|a| a == "--bench");
    let (users, rows_per_user) = if full { (1000, 1000) } else { (20, 100) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        jwt_secret: Some("criterion-secret-0123456789".into()),
        ..Config::default()
    };
    let node = Node::open(config).expect("open node");
    let admin = ctx("admin", Role::Admin);
    let alice = ctx("alice", Role::User);
    rt.block_on(async {
        run(&node, &admin, "CREATE NAMESPACE b; CREATE USER TABLE b.m (content TEXT); \
             CREATE USER TABLE b.msgs (id BIGINT PRIMARY KEY, conversation_id TEXT NOT NULL, content TEXT)")
        .await;
        for u in 0..users {
            let user = ctx(&format!("user{u}"), Role::User);
            for start in (0..rows_per_user).step_by(1000) {
                let values: Vec<String> = (start..(start + 1000).min(rows_per_user))
                    .map(|i| format!("({i}, 'conversation {}', 'message {i}')", i % 10))
                    .collect();
                run(&node, &user, &format!("INSERT INTO b.msgs VALUES {}", values.join(", "))).await;
            }
        }
    });

    // The parse alone: every request pays it before anything else.
    c.bench_function("parse_single_row_insert", |b| {
        b.iter(|| {
            let (stmts, err) = parse_statements(std::hint::black_box(
                "INSERT INTO b.m (content) VALUES ('hello 1')",
            ));
            assert!(err.is_none() && stmts.len() == 1);
            stmts
        })
    });
    let mut i = 0u64;
    c.bench_function("insert_single_row", |b| {
        b.iter(|| {
            i += 1;
            rt.block_on(run(
                &node,
                &alice,
                &format!("INSERT INTO b.m (content) VALUES ('hello {i}')"),
            ))
        })
    });
    let batch: Vec<String> = (0..1000).map(|i| format!("('row {i}')")).collect();
    let batch_sql = format!("INSERT INTO b.m (content) VALUES {}", batch.join(", "));
    c.bench_function("insert_batch_1000_rows", |b| {
        b.iter(|| rt.block_on(run(&node, &alice, &batch_sql)))
    });
    let reader = ctx("user7", Role::User);
    c.bench_function("select_100_of_user_partition", |b| {
        b.iter(|| {
            let r = rt.block_on(run(
                &node,
                &reader,
                "SELECT id, content FROM b.msgs WHERE conversation_id = 'conversation 3'",
            ));
            assert_eq!(r.row_count, rows_per_user / 10);
        })
    });
    // Integer arithmetic over many rows: what checking each `*` and `+` for overflow
    // costs a query (sql/arithmetic.rs, ADR 0028).
    let n: i64 = if full { 1_000_000 } else { 10_000 };
    let arithmetic_sql = format!(
        "SELECT sum(x * 3 + 1) AS s FROM (SELECT unnest(range(1, {})) AS x)",
        n + 1
    );
    c.bench_function("integer_arithmetic_rows", |b| {
        b.iter(|| {
            let r = rt.block_on(run(&node, &alice, &arithmetic_sql));
            assert_eq!(r.rows[0]["s"], serde_json::json!(3 * n * (n + 1) / 2 + n));
        })
    });
}

criterion_group!(benches, engine);

fn main() {
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
