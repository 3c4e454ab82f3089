"""Results from real boards in the report: `python -m stages.report --board-results DIR` reads every
verify.json under DIR (what `python -m runtime verify` writes on a board; copy them back, one folder
per board if you like) and shows them beside the build's numbers, labelled with the board and its
backend version."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

COLUMNS = ("build", "board (machine, CPU)", "backend", "backend version (built with)", "golden inputs",
           "max abs diff (tolerance)", "decisions agree", "latency ms p50 / p90 / p99", "verify")


def read(folder: Optional[Path]) -> list[dict]:
    """Every readable verify.json under ``folder``, with the file it came from; unreadable ones are named."""
    if folder is None:
        return []
    rows = []
    for path in sorted(Path(folder).rglob("verify.json")):
        try:
            record = json.loads(path.read_text())
            record["file"] = str(path.relative_to(folder))
            rows.append(record)
        except (OSError, ValueError) as exc:
            rows.append({"file": str(path.relative_to(folder)), "unreadable": str(exc)})
    return rows


def rows(results: list[dict]) -> list[list[str]]:
    out = []
    for r in results:
        if "unreadable" in r:
            out.append([r["file"], "?", "?", "?", "?", "?", "?", "?", f"unreadable: {r['unreadable']}"])
            continue
        board, version, f, ms = r.get("board", {}), r.get("backend_version", {}), r.get("fidelity", {}), r.get("latency_ms", {})
        golden = r.get("golden", {})
        out.append([f"{r.get('model')}/{r.get('target')}/{r.get('quant')}",
                    f"{board.get('machine', '?')}, {board.get('cpu', '?')}", str(r.get("backend", "?")),
                    f"{version.get('package')} {version.get('here')} ({version.get('built')})",
                    f"{golden.get('n', '?')} of {golden.get('of', golden.get('n', '?'))}",
                    f"{f.get('max_abs_diff', float('nan')):.3g} ({f.get('atol', float('nan')):.3g})",
                    f"{f.get('agreement', float('nan')):.3f}",
                    " / ".join(f"{ms.get(k, float('nan')):.2f}" for k in ("p50", "p90", "p99")),
                    "PASS" if r.get("passed") else "FAIL: " + "; ".join(r.get("failures", [])[:2])])
    return out
