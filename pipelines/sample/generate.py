#!/usr/bin/env python3
"""Writes the bundled demo sample: items.jsonl and behaviours.jsonl (deterministic, seed 7).

A few records are wrong on purpose (unknown action, seconds instead of milliseconds, missing rating) so that the
demo shows them going to the dead-letter file, and one item update is older than what precedes it, so the demo
shows "latest version wins". Run from the repo root: python3 pipelines/sample/generate.py
"""
import json
import random
from pathlib import Path

rng = random.Random(7)
HERE = Path(__file__).parent
T0 = 1_764_547_200_000  # 2025-12-01T00:00:00Z in milliseconds

TOPICS = {
    "cooking": (["noodles", "dumplings", "hotpot", "baking", "street food"], ["recipe", "food", "kitchen"]),
    "travel": (["Guilin rivers", "Xi'an night market", "Tibet road trip", "Hangzhou lake", "Harbin ice"], ["travel", "vlog", "scenery"]),
    "pets": (["cat wakes owner", "corgi at the beach", "parrot sings", "kitten first bath", "husky talks back"], ["pets", "cute", "animals"]),
    "fitness": (["10 minute abs", "morning stretch", "kettlebell basics", "running form", "yoga for back pain"], ["fitness", "health", "workout"]),
    "music": (["guzheng cover", "street piano", "beatbox battle", "erhu solo", "acoustic ballad"], ["music", "cover", "live"]),
    "tech": (["phone teardown", "budget laptop review", "smart home setup", "drone unboxing", "keyboard build"], ["tech", "review", "gadgets"]),
    "comedy": (["office prank", "grandma reacts", "dubbing fail", "cat vs cucumber", "dance challenge"], ["funny", "comedy", "trend"]),
    "education": (["history of silk road", "quantum in 60s", "calligraphy lesson", "math trick", "learn english idioms"], ["education", "learning", "explainer"]),
}

items = []
n = 0
for topic, (titles, tags) in TOPICS.items():
    for title in titles:
        n += 1
        item_id = f"v{n:04d}"
        author = f"a{rng.randrange(1, 15):03d}"
        items.append({
            "item_id": item_id,
            "author_id": author,
            "nickname": f"{topic}_creator_{author}",
            "title": title.capitalize(),
            "ocr": f"{title} #{tags[0]}",
            "asr": f"today we look at {title}, like and follow for more {topic}",
            "tags": [topic] + rng.sample(tags, 2),
            "created_at": T0 + n * 3_600_000,
            "version": 1,
        })

lines = [json.dumps(i, ensure_ascii=False) for i in items]
# A re-edited title (version 2) for one item, then a late, stale version-1 copy that must be ignored.
updated = dict(items[0], title=items[0]["title"] + " (extended cut)", version=2)
lines.append(json.dumps(updated, ensure_ascii=False))
lines.append(json.dumps(items[0], ensure_ascii=False))
# Invalid: an item with no id.
lines.append(json.dumps({"item_id": "", "created_at": T0, "version": 1}))
(HERE / "items.jsonl").write_text("\n".join(lines) + "\n")

topic_of = {i["item_id"]: i["tags"][0] for i in items}
by_topic = {}
for i in items:
    by_topic.setdefault(i["tags"][0], []).append(i["item_id"])

events = []
for u in range(1, 31):
    user = f"u{u:03d}"
    likes = rng.sample(list(TOPICS), 2)  # each user has two interests
    ts = T0 + 86_400_000 + rng.randrange(0, 3_600_000)
    for _ in range(rng.randrange(15, 35)):
        topic = rng.choice(likes) if rng.random() < 0.8 else rng.choice(list(TOPICS))
        item = rng.choice(by_topic[topic])
        ts += rng.randrange(5_000, 600_000)
        events.append({"user_id": user, "item_id": item, "action": "impression", "dwell_ms": 0, "ts": ts})
        if topic in likes:
            dwell = rng.randrange(8_000, 60_000)
            events.append({"user_id": user, "item_id": item, "action": "play", "dwell_ms": dwell, "ts": ts + 500})
            r = rng.random()
            if r < 0.35:
                events.append({"user_id": user, "item_id": item, "action": "like", "dwell_ms": 0, "ts": ts + dwell})
            elif r < 0.45:
                events.append({"user_id": user, "item_id": item, "action": "share", "dwell_ms": 0, "ts": ts + dwell,
                               "context": {"surface": "feed"}})
        else:
            events.append({"user_id": user, "item_id": item, "action": "skip", "dwell_ms": rng.randrange(300, 3_000), "ts": ts + 300})
events.sort(key=lambda e: e["ts"])

lines = [json.dumps(e) for e in events]
# Invalid on purpose, spread through the file.
lines.insert(17, json.dumps({"user_id": "u001", "item_id": "v0001", "action": "teleport", "dwell_ms": 0, "ts": T0}))
lines.insert(101, json.dumps({"user_id": "u002", "item_id": "v0002", "action": "play", "dwell_ms": 1000, "ts": T0 // 1000}))
lines.insert(202, json.dumps({"user_id": "u003", "item_id": "v0003", "action": "rate", "dwell_ms": 0, "ts": T0}))
lines.insert(303, '{"user_id": "u004", "item_id": "v0004", "action": "like", "dwell_ms": 0, "ts": ')
(HERE / "behaviours.jsonl").write_text("\n".join(lines) + "\n")
print(f"{len(items)} items, {len(events)} behaviours (+4 invalid)")
