#!/usr/bin/env python3
"""Writes the values table of charts/nodewright/README.md from values.yaml.

A value is documented by a comment line starting with "# --" right above its key (more "#"
lines may continue it), as helm-docs reads them; its default is the value in values.yaml.
The table goes between the README's "<!-- values-table:start -->" and
"<!-- values-table:end -->" lines. With --check nothing is written and the exit status says
whether the table is up to date (scripts/chart-check.py runs it so).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent.parent / "charts" / "nodewright"
START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/]+):(?:\s|$)")


def documented(text: str, values: dict) -> list[tuple[str, object, str]]:
    """(dotted key, default, description) of every documented value, in file order."""
    rows = []
    stack: list[tuple[int, str]] = []
    comment: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped[4:].strip()]
            continue
        if comment is not None and stripped.startswith("#") and not stripped.startswith("# -"):
            # A commented-out example under the description ends it.
            if re.match(r"^#\s{2,}|^#\s*[-\w]+:", stripped):
                comment = None
            else:
                comment.append(stripped[1:].strip())
            continue
        m = KEY.match(line)
        if not m:
            if stripped and not stripped.startswith("#"):
                comment = None
            continue
        indent = len(m.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group("key")))
        path = [k for _, k in stack]
        node: object = values
        for k in path:
            if not isinstance(node, dict) or k not in node:
                node = KeyError
                break
            node = node[k]
        if comment is not None and node is not KeyError:
            rows.append((".".join(path), node, " ".join(comment)))
        comment = None
    return rows


def table(rows: list[tuple[str, object, str]]) -> str:
    out = ["| Key | Default | Description |", "| --- | --- | --- |"]
    for key, default, desc in rows:
        shown = json.dumps(default, separators=(", ", ": "))
        if len(shown) > 80:
            shown = "see values.yaml"
        cell = f"`{shown}`".replace("|", "\\|")
        text = desc.replace("|", "\\|")
        out.append(f"| `{key}` | {cell} | {text} |")
    return "\n".join(out)


def undocumented(values: dict, rows: list[tuple[str, object, str]], prefix: str = "") -> list[str]:
    """Values neither documented themselves nor inside a documented map."""
    keys = {key for key, _, _ in rows}
    missing = []
    for k, v in values.items():
        path = f"{prefix}{k}"
        if path in keys:
            continue
        if isinstance(v, dict) and v:
            missing += undocumented(v, rows, path + ".")
        else:
            missing.append(path)
    return missing


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = ap.parse_args()
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    rows = documented(text, values)
    missing = undocumented(values, rows)
    if missing:
        print(f"values.yaml: no '# --' description for {', '.join(missing)}")
        return 1
    readme_path = CHART / "README.md"
    readme = readme_path.read_text()
    if START not in readme or END not in readme:
        print(f"{readme_path}: no {START} ... {END} section")
        return 1
    before, rest = readme.split(START, 1)
    _, after = rest.split(END, 1)
    new = f"{before}{START}\n{table(rows)}\n{END}{after}"
    if args.check:
        if new != readme:
            print(f"{readme_path} is out of date: run scripts/chart-readme.py")
            return 1
        print(f"README.md documents all {len(rows)} documented values")
        return 0
    readme_path.write_text(new)
    print(f"wrote {len(rows)} values into {readme_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
