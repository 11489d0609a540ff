#!/usr/bin/env python3
"""Writes the README's configuration reference (between the config-reference markers) from
pipelines/defaults.toml: every key, its default and the comment above it. `--check` only compares and exits 1
when the README is stale (integration/cli.rs runs it, and also checks that every key the code knows is listed).

    python3 scripts/config_reference.py [--check]
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def rows():
    section, comment, out = "", [], []
    for raw in (ROOT / "pipelines/defaults.toml").read_text().splitlines():
        line = raw.strip()
        if not line:
            comment = []
        elif line.startswith("#"):
            comment.append(line.lstrip("#").strip())
        elif line.startswith("[["):
            # An array of tables (ingest.files): one row for the array, its entries are data.
            name = line.strip("[]")
            if section != name:
                meaning = " ".join(comment).replace("|", "\\|")
                out.append(f"| `{name}` | the bundled sample | {meaning} |")
            section, comment = name, []
        elif line.startswith("["):
            # A comment right above a section header describes the section: it goes with its first key.
            section = line.strip("[]")
        elif "=" in line and not raw.startswith((" ", "\t")):
            key, value = (part.strip() for part in line.split("=", 1))
            if section == "ingest.files" or not re.fullmatch(r"[a-z_0-9]+", key):
                continue
            meaning = " ".join(comment).replace("|", "\\|") or "(as above)"
            value = value.replace("|", "\\|")
            out.append(f"| `{section}.{key}` | `{value}` | {meaning} |")
            comment = []
    return out


def render():
    return "\n".join([START, "| key | default | meaning |", "|---|---|---|", *rows(), END])


def main():
    readme = (ROOT / "README.md").read_text()
    current = readme[readme.index(START): readme.index(END) + len(END)]
    wanted = render()
    if "--check" in sys.argv:
        if current != wanted:
            print("README.md's configuration reference is stale: run python3 scripts/config_reference.py")
            sys.exit(1)
        return
    (ROOT / "README.md").write_text(readme.replace(current, wanted))


if __name__ == "__main__":
    main()
