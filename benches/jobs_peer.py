#!/usr/bin/env python3
"""DuckDB peer of benches/jobs.rs: runs the same rendered job SQL on the same Parquet log segments.

    jobs_peer.py SEGMENTS_DIR VIEW_SQL_FILE REPEATS NAME=SQL_FILE...

prints one JSON object: {name: {"seconds": [...], "rows": n}}. Each run plans, executes and materialises the
full result in memory (a temporary table, as the Rust side collects record batches), on every core.
"""

import json
import os
import sys
import time

import duckdb


def main():
    segments, view_file, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
    con = duckdb.connect()
    con.execute(f"SET threads TO {os.cpu_count()}")
    con.execute(
        f"CREATE VIEW log_behaviours AS SELECT * FROM read_parquet('{segments}/*.parquet')"
    )
    con.execute("CREATE VIEW behaviours AS " + open(view_file).read())
    out = {}
    for arg in sys.argv[4:]:
        name, path = arg.split("=", 1)
        sql = open(path).read()
        times, rows = [], None
        for _ in range(repeats):
            t = time.perf_counter()
            con.execute("CREATE OR REPLACE TEMP TABLE result AS " + sql)
            times.append(time.perf_counter() - t)
            rows = con.execute("SELECT COUNT(*) FROM result").fetchone()[0]
        out[name] = {"seconds": times, "rows": rows}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
