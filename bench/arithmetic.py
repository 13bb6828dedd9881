#!/usr/bin/env python3
"""What checked integer arithmetic (ADR 0028) costs per operation, against DOUBLE arithmetic.

Starts a `kalamdb` node (bench/cold_tier.py's `Node`) and times, from the client, 7 runs each
of `sum(x)` and of `sum(<24 operations on x>)` over N generated rows (`unnest(range(..))`),
once with BIGINT x and once with DOUBLE x; the sums are checked first. The difference of the
two divided by 24 * N is the cost of one operation on one row; the generator's cost cancels.

Usage: python3 bench/arithmetic.py --kalamdb target/release/kalamdb [--rows N]
"""
import argparse, os, statistics, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cold_tier import ADMIN, Node  # noqa: E402


def expression():
    e = "x"
    for _ in range(8):
        e = f"({e} * 3 - x * 2)"  # stays x; 3 operations per step, 24 in all
    return e


def timed(node, sql, expected, runs):
    node.sql(ADMIN, sql)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        rows = node.sql(ADMIN, sql)
        times.append((time.perf_counter() - start) * 1000)
        if float(rows[0]["s"]) != expected:
            raise SystemExit(f"{sql[:80]}: sum {rows[0]['s']}, expected {expected}")
    return min(times), statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kalamdb", required=True)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    n = args.rows
    expected = n * (n + 1) / 2
    node = Node(args.kalamdb)
    try:
        for kind, gen in (
            ("BIGINT", f"(SELECT unnest(range(1, {n + 1})) AS x)"),
            ("DOUBLE", f"(SELECT CAST(unnest(range(1, {n + 1})) AS DOUBLE) AS x)"),
        ):
            base = timed(node, f"SELECT sum(x) AS s FROM {gen}", expected, args.runs)
            ops = timed(node, f"SELECT sum({expression()}) AS s FROM {gen}", expected, args.runs)
            per_op = [(o - b) * 1e6 / (24 * n) for o, b in zip(ops, base)]
            print(f"{kind}: sum(x) {base[0]:.0f} ms (median {base[1]:.0f}), "
                  f"sum(24 operations) {ops[0]:.0f} ms (median {ops[1]:.0f}): "
                  f"{per_op[0]:.2f} ns per operation and row (medians: {per_op[1]:.2f})")
    finally:
        node.stop()


if __name__ == "__main__":
    main()
