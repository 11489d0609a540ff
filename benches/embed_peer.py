#!/usr/bin/env python3
"""The Python peer of benches/embed.rs: the same items through a plain Python pipeline doing the same work
(tokenizers + PIL + numpy audio features + onnxruntime), using the preprocessing of models/sail-lite/build.py,
batched the same way (length-sorted, fixed batch size). Prints one JSON line per batch size.

Usage: embed_peer.py MODEL_DIR ITEMS.jsonl BATCH_SIZE [BATCH_SIZE ...]
Run with the export venv's python ($SAILSTREAM_HOME/export-venv/bin/python), which has these packages.
"""
import json
import os
import sys
import time
import tomllib

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "models", "sail-lite"))
import build  # noqa: E402  (the reference preprocessing)
import onnxruntime as ort  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402


def main() -> None:
    model_dir, items_path, *sizes = sys.argv[1:]
    with open(os.path.join(model_dir, "manifest.toml"), "rb") as f:
        manifest = tomllib.load(f)
    tok = Tokenizer.from_file(os.path.join(model_dir, manifest["text"]["tokenizer"]))
    tok.no_padding()
    tok.enable_truncation(manifest["text"]["max_tokens"])
    sess = ort.InferenceSession(os.path.join(model_dir, manifest["model"]["file"]), providers=["CPUExecutionProvider"])
    items = [json.loads(line) for line in open(items_path)]

    def run(batch_size: int) -> float:
        started = time.perf_counter()
        texts = [build.render_text(it, manifest["text"])[1] for it in items]
        # Sorted by text length in characters: close to sailstream's token-count order without tokenizing twice.
        order = sorted(range(len(items)), key=lambda i: len(texts[i] or ""))
        for start in range(0, len(order), batch_size):
            batch = [items[i] for i in order[start:start + batch_size]]
            sess.run(None, build.model_inputs(batch, manifest, tok))
        return time.perf_counter() - started

    run(int(sizes[0]))  # warm-up
    for size in sizes:
        secs = run(int(size))
        print(json.dumps({"batch_size": int(size), "items": len(items), "seconds": secs, "items_per_s": len(items) / secs}))


if __name__ == "__main__":
    main()
