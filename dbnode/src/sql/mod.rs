//! SQL: KalamDB's dialect on top of `sqlparser`, the DataFusion session, the table providers
//! of USER and SHARED tables, the system tables, request parameters and the statement executor.

pub mod arithmetic;
pub mod checked_sum;
pub mod ddl;
pub mod dedup;
pub mod executor;
pub mod fast_insert;
pub mod functions;
pub mod hot_cache;
pub mod literals;
pub mod output;
pub mod parser;
pub mod prepared;
pub mod provider;
pub mod rows;
pub mod schema;
pub mod system_tables;
pub mod yield_points;

/// `item(0), item(1), ..., item(n - 1)`: the long lists the tests of the bounds write.
#[cfg(test)]
pub(crate) fn comma_list(n: usize, item: impl Fn(usize) -> String) -> String {
    (0..n).map(item).collect::<Vec<_>>().join(", ")
}
