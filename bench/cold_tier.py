#!/usr/bin/env python3
"""Cold-tier load tool: starts a `kalamdb` node and measures, checking results first:

1. flush throughput: MB of Parquet written per second by one FLUSH TABLE of 1 KiB rows;
2. pruning: a time-range query on `_updated` over many flushed files, fraction of files
   skipped (counted from the EXPLAIN plan's Parquet file groups);
3. hot vs cold: a full scan of a table half hot / half cold against the same rows all cold;
4. cleanup: deleted-row retention, rows/s removed by the scheduled `cleanup` jobs of a table
   with `deleted_retention = '2s'` whose deleted rows are half in Parquet (deleted, then
   flushed), half hot tombstones over flushed rows (timed by the jobs' `duration_ms` plus the
   `survey_ms` scan that found the work).
5. backup / restore: BACKUP NAMESPACE of N MB (mostly Parquet, a tenth hot) to a local
   directory and RESTORE NAMESPACE from it, MB/s from the jobs' results in system.jobs;
6. add column: ALTER TABLE ... ADD COLUMN ... DEFAULT on the half-hot table of (3), timed
   by the client around the statement, then every row must show the default.
7. S3 reads: one conversation (100 of 1,000 rows) of a user whose rows are all in Parquet on
   S3 (a `moto_server` started here), latency p50/p99 of file scans with the node's Parquet
   footer cache off (`cold_metadata_cache_bytes = 0`) and on (the default), and with the
   files read whole into memory (the default `cold_read_in_memory_bytes`), without and with
   (the default) their rows kept decoded between reads (`cold_decoded_cache_bytes`; each
   user is read reads/users times, so all but the first read of a user can be served from
   it, which the node's /metrics must confirm), on four fresh nodes.

Scenarios 1 to 6 run on one node that plans a file scan for every read
(`cold_read_in_memory_bytes = 0`), as a large table has them.

Usage: python3 bench/cold_tier.py --kalamdb target/release/kalamdb [--quick]
Numbers only mean something with a release build; --quick checks correctness in seconds.
Prints a JSON document on stdout, progress on stderr.
"""
import argparse, base64, hashlib, hmac, json, os, re, statistics, subprocess, sys, tempfile, time
import urllib.request
from datetime import datetime, timezone

SECRET = "kalamdb-bench-secret-0123456789abcdef0123"


def jwt(user, admin):
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = enc(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = enc(json.dumps({"sub": user, "role": "admin" if admin else "user",
                           "exp": int(time.time()) + 7200}).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{enc(sig)}"


ADMIN, USER = jwt("root", True), jwt("u1", False)


def log(msg):
    print(f"[cold_tier] {msg}", file=sys.stderr, flush=True)


class Node:
    def __init__(self, binary, env=None, s3_endpoint=None):
        self.dir = tempfile.TemporaryDirectory(prefix="kalam-bench-cold-")
        if s3_endpoint:
            # The credential set `s3` (moto accepts any key) in the default credentials_dir.
            creds = os.path.join(self.dir.name, "credentials", "s3")
            os.makedirs(creds)
            for name, value in (("access_key_id", "bench"), ("secret_access_key", "bench-secret"),
                                ("region", "us-east-1"), ("endpoint", s3_endpoint)):
                with open(os.path.join(creds, name), "w") as f:
                    f.write(value)
        env = dict(os.environ, KALAMDB_JWT_SECRET=SECRET, KALAMDB_FLUSH_CHECK_INTERVAL_MS="200",
                   KALAMDB_CLEANUP_INTERVAL="500ms", KALAMDB_CLEANUP_FILE_GRACE="0s",
                   KALAMDB_LOG="warn", **(env or {}))
        self.proc = subprocess.Popen([binary, "serve", "--data-dir", self.dir.name, "--listen",
                                      "127.0.0.1:0"], stdout=subprocess.PIPE, env=env, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"http://(\S+)", line)
        if not m:
            raise SystemExit(f"node did not start: {line!r}")
        self.base = f"http://{m.group(1)}"
        self.url = f"{self.base}/api/sql"

    def metric(self, line_prefix):
        """The value of the first `/metrics` line starting with `line_prefix`."""
        with urllib.request.urlopen(f"{self.base}/metrics", timeout=60) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(line_prefix):
                    return float(line.rsplit(" ", 1)[1])
        raise SystemExit(f"no {line_prefix} in /metrics")

    def sql(self, token, text):
        req = urllib.request.Request(self.url, json.dumps({"sql": text}).encode(),
                                     {"Authorization": f"Bearer {token}",
                                      "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.load(e)
        if body.get("status") != "success":
            raise SystemExit(f"{text[:120]}: {body}")
        return body["results"][-1]["rows"]

    def flush(self, table):
        return self.job(self.sql(ADMIN, f"FLUSH TABLE {table}")[0]["job_id"])

    def job(self, job):
        """The system.jobs row of `job` once it finished; it must have completed."""
        while True:
            row = self.sql(ADMIN, f"SELECT job_type, status, result, duration_ms, error_message "
                                  f"FROM system.jobs WHERE job_id = '{job}'")[0]
            if row["status"] != "running":
                if row["status"] != "completed":
                    raise SystemExit(f"{row['job_type']} job {job} failed: {row}")
                return row
            time.sleep(0.05)

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.dir.cleanup()


def insert(node, token, table, start, n, body, batch):
    for lo in range(start, start + n, batch):
        hi = min(lo + batch, start + n)
        values = ", ".join(f"({i}, '{body(i)}')" for i in range(lo, hi))
        node.sql(token, f"INSERT INTO {table} (id, body) VALUES {values}")


def flush_throughput(node, rows):
    node.sql(ADMIN, "CREATE SHARED TABLE bench.f (id BIGINT PRIMARY KEY, body TEXT) "
                    "FLUSH POLICY ROWS 100000000")
    log(f"flush throughput: inserting {rows} rows of ~1 KiB")
    insert(node, ADMIN, "bench.f", 1, rows, lambda i: base64.b64encode(os.urandom(768)).decode(), 500)
    # Let RocksDB finish the memtable flushes and compactions of the ingest, so that the
    # number is the flush's own (on 2 cores they would otherwise share its CPU).
    time.sleep(3)
    job = node.flush("bench.f")
    result, ms = job["result"], job["duration_ms"]
    if result["rows"] != rows:
        raise SystemExit(f"flushed {result['rows']} rows, expected {rows}")
    return {"rows": rows, "parquet_mb": result["bytes"] / 1e6, "files": result["files"],
            "duration_ms": ms, "mb_per_s": result["bytes"] / 1e6 / (ms / 1000),
            "rows_per_s": rows / (ms / 1000)}


def pruning(node, rounds):
    node.sql(ADMIN, "CREATE SHARED TABLE bench.p (id BIGINT PRIMARY KEY, body TEXT) "
                    "FLUSH POLICY ROWS 100000000")
    log(f"pruning: {rounds} flushes of 100 rows")
    cutoff, recent = None, 0
    for r in range(rounds):
        if r == rounds - rounds // 10:
            time.sleep(0.01)
            cutoff = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        insert(node, ADMIN, "bench.p", r * 100 + 1, 100, lambda i: f"v{i}", 100)
        node.flush("bench.p")
        if cutoff:
            recent += 100
    where = f"WHERE _updated >= '{cutoff}'"
    count = node.sql(ADMIN, f"SELECT count(*) AS n FROM bench.p {where}")[0]["n"]
    if count != recent:
        raise SystemExit(f"time-range query counted {count}, expected {recent}")
    plan = "\n".join(r["plan"] for r in node.sql(ADMIN, f"EXPLAIN SELECT count(*) FROM bench.p {where}"))
    m = re.search(r"file_groups=\{(\d+) groups?", plan)
    if not m:
        raise SystemExit(f"pruning: no Parquet scan in the plan:\n{plan}")
    read = int(m.group(1))
    return {"files_total": rounds, "files_read": read, "fraction_skipped": 1 - read / rounds,
            "rows_matched": count}


def hot_vs_cold(node, rows):
    for t in ("h", "c"):
        node.sql(ADMIN, f"CREATE USER TABLE bench.{t} (id BIGINT PRIMARY KEY, body TEXT) "
                        "FLUSH POLICY ROWS 100000000")
    log(f"hot vs cold: {rows} rows in each table")
    body = lambda i: f"message number {i} " + "x" * 80
    insert(node, USER, "bench.c", 1, rows, body, 1000)
    node.flush("bench.c")
    insert(node, USER, "bench.h", 1, rows // 2, body, 1000)
    node.flush("bench.h")
    insert(node, USER, "bench.h", rows // 2 + 1, rows - rows // 2, body, 1000)
    q = "SELECT count(*) AS n, sum(length(body)) AS bytes FROM bench.{}"
    times, firsts = {}, {}
    for t in ("h", "c"):
        samples = []
        for _ in range(5):
            started = time.perf_counter()
            row = node.sql(USER, q.format(t))[0]
            samples.append((time.perf_counter() - started) * 1000)
            if row["n"] != rows:
                raise SystemExit(f"bench.{t} counted {row['n']} rows, expected {rows}")
        # The first scan after the last write decodes the hot rows from RocksDB; the second
        # decodes them into the hot cache (ADR 0017); later ones read the cache.
        firsts[t] = samples[0]
        times[t] = statistics.median(samples)
    return {"rows": rows, "half_hot_ms": times["h"], "all_cold_ms": times["c"],
            "ratio": times["h"] / times["c"],
            "half_hot_first_ms": firsts["h"], "all_cold_first_ms": firsts["c"],
            "first_scan_ratio": firsts["h"] / firsts["c"]}


def cleanup(node, rows):
    """Soft-deletes `rows` of `rows * 5 // 4` rows (the first half deleted and flushed, the
    second half left as hot tombstones over flushed rows), waits past the retention and for
    the cleanup jobs, checks what is left, and reports deleted rows removed per second."""
    total, half = rows + rows // 4, rows // 2
    node.sql(ADMIN, "CREATE SHARED TABLE bench.d (id BIGINT PRIMARY KEY, body TEXT) "
                    "FLUSH POLICY ROWS 100000000 WITH (deleted_retention = '2s')")
    log(f"cleanup: {total} rows, {rows} of them deleted")
    insert(node, ADMIN, "bench.d", 1, total, lambda i: f"message number {i} " + "x" * 80, 1000)
    node.flush("bench.d")
    node.sql(ADMIN, f"DELETE FROM bench.d WHERE id <= {half}")
    node.flush("bench.d")
    node.sql(ADMIN, f"DELETE FROM bench.d WHERE id > {half} AND id <= {rows}")
    q = ("SELECT status, result, duration_ms, error_message FROM system.jobs "
         "WHERE job_type = 'cleanup' AND namespace = 'bench' AND table_name = 'd'")
    deadline = time.time() + 600
    while True:
        jobs = node.sql(ADMIN, q)
        failed = [j for j in jobs if j["status"] == "failed"]
        if failed:
            raise SystemExit(f"cleanup failed: {failed}")
        done = [j for j in jobs if j["status"] == "completed"]
        removed = sum(j["result"]["rows_removed"] for j in done)
        if removed >= rows and len(done) == len(jobs):
            break
        if time.time() > deadline:
            raise SystemExit(f"cleanup removed {removed} of {rows} rows in 600 s: {jobs}")
        time.sleep(0.2)
    if removed != rows:
        raise SystemExit(f"cleanup removed {removed} rows, expected {rows}")
    live = node.sql(ADMIN, "SELECT count(*) AS n FROM bench.d")[0]["n"]
    dead = node.sql(ADMIN, "SELECT count(*) AS n FROM bench.d WHERE _deleted = true")[0]["n"]
    if (live, dead) != (total - rows, 0):
        raise SystemExit(f"after cleanup: {live} live and {dead} deleted rows, "
                         f"expected {total - rows} and 0")
    ms = sum(j["duration_ms"] + j["result"]["survey_ms"] for j in done)
    return {"rows_deleted": rows, "rows_kept": total - rows, "jobs": len(done),
            "rows_removed": removed,
            "versions_removed": sum(j["result"]["versions_removed"] for j in done),
            "bytes_freed": sum(j["result"]["bytes_freed"] for j in done),
            "duration_ms": ms, "rows_per_s": removed / (ms / 1000) if ms > 0 else float("inf")}


def add_column(node, table, rows):
    """ALTER TABLE ADD COLUMN with a DEFAULT on `table` (`rows` rows, half hot, half in
    Parquet): a metadata change, timed around the statement; every row then reads the
    default, from both tiers."""
    log(f"add column: ALTER TABLE {table} ADD COLUMN on {rows} rows")
    started = time.perf_counter()
    node.sql(ADMIN, f"ALTER TABLE {table} ADD COLUMN priority TEXT DEFAULT 'normal'")
    ms = (time.perf_counter() - started) * 1000
    row = node.sql(USER, f"SELECT count(*) AS n FROM {table} WHERE priority = 'normal'")[0]
    if row["n"] != rows:
        raise SystemExit(f"{row['n']} of {rows} rows read the new column's default")
    return {"rows": rows, "alter_ms": ms}


def backup_restore(node, mb):
    """BACKUP NAMESPACE of ~`mb` MB to a local directory and RESTORE NAMESPACE from it; MB/s
    is the bytes each job moved (its result in system.jobs) over the job's duration."""
    node.sql(ADMIN, "CREATE NAMESPACE bk")
    node.sql(ADMIN, "CREATE SHARED TABLE bk.b (id BIGINT PRIMARY KEY, body TEXT) "
                    "FLUSH POLICY ROWS 100000000")
    rows = mb * 1000
    cold = rows - rows // 10
    log(f"backup/restore: inserting {rows} rows of ~1 KiB ({cold} flushed, the rest hot)")
    body = lambda i: base64.b64encode(os.urandom(768)).decode()
    insert(node, ADMIN, "bk.b", 1, cold, body, 500)
    node.flush("bk.b")
    insert(node, ADMIN, "bk.b", cold + 1, rows - cold, body, 500)
    url = "file://" + os.path.join(node.dir.name, "backup-bk")
    backup = node.job(node.sql(ADMIN, f"BACKUP NAMESPACE bk TO '{url}'")[0]["job_id"])
    shown = node.sql(ADMIN, f"SHOW BACKUP '{url}'")
    if [(t["table_name"], t["rows"]) for t in shown] != [("b", rows)]:
        raise SystemExit(f"SHOW BACKUP lists {shown}, expected bk.b with {rows} rows")
    restore = node.job(node.sql(ADMIN, f"RESTORE NAMESPACE bkr FROM '{url}'")[0]["job_id"])
    n = node.sql(ADMIN, "SELECT count(*) AS n FROM bkr.b")[0]["n"]
    if n != rows:
        raise SystemExit(f"the restored bkr.b holds {n} rows, expected {rows}")

    def rate(job):
        moved, ms = job["result"]["bytes"], job["duration_ms"]
        return {"mb": moved / 1e6, "files": job["result"]["files"], "duration_ms": ms,
                "mb_per_s": moved / 1e6 / (ms / 1000)}

    return {"rows": rows, "backup": rate(backup), "restore": rate(restore)}


SCENARIOS = ("flush_throughput", "pruning", "hot_vs_cold", "add_column", "cleanup",
             "backup_restore", "s3_reads")


class Moto:
    """An in-memory S3 (`moto_server` from PyPI) on a free loopback port."""

    def __init__(self):
        import socket
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        try:
            self.proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except FileNotFoundError:
            raise SystemExit("s3_reads needs moto_server: python3 -m pip install 'moto[server]'")
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).read()
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise SystemExit("moto_server did not start")
                time.sleep(0.1)

    def create_bucket(self, name):
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/{name}", method="PUT"),
                               timeout=10).read()

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def s3_reads(binary, users, reads):
    moto = Moto()
    out = {"users": users, "reads": reads}
    try:
        scan = {"KALAMDB_COLD_READ_IN_MEMORY_BYTES": "0"}
        for label, env in (("cache_off", {**scan, "KALAMDB_COLD_METADATA_CACHE_BYTES": "0"}),
                           ("cache_on", scan),
                           ("in_memory_undecoded", {"KALAMDB_COLD_DECODED_CACHE_BYTES": "0"}),
                           ("in_memory", {})):
            node = Node(binary, env=env, s3_endpoint=moto.endpoint)
            try:
                bucket = f"bench-{label.replace('_', '-')}"
                moto.create_bucket(bucket)
                node.sql(ADMIN, "INSERT INTO system.storage_locations (location_name, location_type, "
                                f"path, credentials_ref) VALUES ('s3', 's3', 's3://{bucket}/', 's3')")
                node.sql(ADMIN, "CREATE NAMESPACE bench")
                node.sql(ADMIN, "CREATE USER TABLE bench.m (id BIGINT PRIMARY KEY, conversation TEXT, "
                                "body TEXT) LOCATION REFERENCE 's3' FLUSH POLICY ROWS 100000000")
                log(f"s3 reads ({label}): {users} users x 1000 rows, flushed to S3")
                tokens = [jwt(f"s3user{u}", False) for u in range(users)]
                for token in tokens:
                    values = ", ".join(f"({i}, 'c{i % 10}', 'message {i}')" for i in range(1000))
                    node.sql(token, f"INSERT INTO bench.m (id, conversation, body) VALUES {values}")
                node.flush("bench.m")
                samples = []
                for i in range(reads):
                    started = time.perf_counter()
                    rows = node.sql(tokens[i % users],
                                    "SELECT id, body FROM bench.m WHERE conversation = 'c3'")
                    samples.append((time.perf_counter() - started) * 1000)
                    ids = sorted(r["id"] for r in rows)
                    if ids != list(range(3, 1000, 10)):
                        raise SystemExit(f"s3 reads ({label}): wrong rows {ids[:5]}... ({len(ids)})")
                if label == "in_memory":
                    hits = node.metric('kalamdb_cold_decoded_cache_lookups_total{result="hit"}')
                    if hits != reads - users:
                        raise SystemExit(f"s3 reads ({label}): {hits:.0f} decoded-cache hits, "
                                         f"expected {reads - users}")
                samples.sort()
                out[label] = {"p50_ms": samples[len(samples) // 2],
                              "p99_ms": samples[min(len(samples) - 1, len(samples) * 99 // 100)]}
            finally:
                node.stop()
    finally:
        moto.stop()
    out["p50_ratio_on_off"] = out["cache_on"]["p50_ms"] / out["cache_off"]["p50_ms"]
    return out


def report(out):
    if "flush_throughput" in out:
        f = out["flush_throughput"]
        log(f"flush: {f['parquet_mb']:.1f} MB in {f['duration_ms']:.0f} ms = {f['mb_per_s']:.1f} MB/s (target >= 100)")
    if "pruning" in out:
        p = out["pruning"]
        log(f"pruning: read {p['files_read']} of {p['files_total']} files, skipped {p['fraction_skipped']:.0%} (target >= 80%)")
    if "hot_vs_cold" in out:
        h = out["hot_vs_cold"]
        log(f"scan: half hot {h['half_hot_ms']:.0f} ms, all cold {h['all_cold_ms']:.0f} ms, ratio {h['ratio']:.2f} (target <= 1.5)")
    if "add_column" in out:
        a = out["add_column"]
        log(f"add column: ALTER TABLE ADD COLUMN on {a['rows']} rows in {a['alter_ms']:.1f} ms (target < 100)")
    if "cleanup" in out:
        c = out["cleanup"]
        log(f"cleanup: {c['rows_removed']} deleted rows removed by {c['jobs']} job(s) in {c['duration_ms']:.0f} ms = {c['rows_per_s']:.0f} rows/s (target >= 50000)")
    if "s3_reads" in out:
        r = out["s3_reads"]
        log(f"s3 reads: footer cache off p50 {r['cache_off']['p50_ms']:.2f} ms p99 {r['cache_off']['p99_ms']:.2f} ms, "
            f"on p50 {r['cache_on']['p50_ms']:.2f} ms p99 {r['cache_on']['p99_ms']:.2f} ms; "
            f"read whole p50 {r['in_memory_undecoded']['p50_ms']:.2f} ms p99 {r['in_memory_undecoded']['p99_ms']:.2f} ms, "
            f"kept decoded p50 {r['in_memory']['p50_ms']:.2f} ms p99 {r['in_memory']['p99_ms']:.2f} ms")
    for what in ("backup", "restore"):
        if "backup_restore" in out:
            j = out["backup_restore"][what]
            log(f"{what}: {j['mb']:.1f} MB in {j['duration_ms']:.0f} ms = {j['mb_per_s']:.1f} MB/s (target >= 100)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kalamdb", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=",".join(SCENARIOS),
                    help="comma-separated scenarios to run (add_column needs hot_vs_cold): "
                         + ", ".join(SCENARIOS))
    args = ap.parse_args()
    only = [s for s in args.only.split(",") if s]
    unknown = [s for s in only if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    if "add_column" in only and "hot_vs_cold" not in only:
        ap.error("add_column alters the table hot_vs_cold fills: run both")
    q = args.quick
    runs = {
        "flush_throughput": lambda: flush_throughput(node, 20_000 if q else 200_000),
        "pruning": lambda: pruning(node, 20 if q else 100),
        "hot_vs_cold": lambda: hot_vs_cold(node, 20_000 if q else 1_000_000),
        "add_column": lambda: add_column(node, "bench.h", 20_000 if q else 1_000_000),
        "cleanup": lambda: cleanup(node, 20_000 if q else 200_000),
        "backup_restore": lambda: backup_restore(node, 10 if q else 200),
        "s3_reads": lambda: s3_reads(args.kalamdb, 5 if q else 50, 50 if q else 500),
    }
    # File scans for every read, as a large table has them: the pruning count reads the plan's
    # file groups (small files are otherwise read whole, without a scan in the plan; s3_reads
    # measures both).
    node = Node(args.kalamdb, env={"KALAMDB_COLD_READ_IN_MEMORY_BYTES": "0"})
    out = {"mode": "quick" if q else "full"}
    try:
        node.sql(ADMIN, "CREATE NAMESPACE bench")
        for name in SCENARIOS:
            if name in only:
                out[name] = runs[name]()
    finally:
        node.stop()
    report(out)
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
