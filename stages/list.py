"""list: what this project can build, read from conf/: models, targets, quant schemes and rewrites.

    python -m stages.list [--json]

Targets say whether their format's toolchain is usable on this machine (and why not). Nothing
here imports torch: composing a target's config and asking its format are cheap.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

from stages.core.log import cli
from stages.core.layout import CONF_DIR


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _files(group: str) -> list[Path]:
    return sorted((CONF_DIR / group).glob("*.yaml"))


def _compose(override: str) -> tuple[Any, Optional[str]]:
    """The validated config for one group choice, or the error that stops it from composing."""
    from stages.core.cli import load

    try:
        return load([override]), None
    except Exception as exc:  # noqa: BLE001 - a broken file must not hide the others
        return None, str(exc).splitlines()[0]


def training_of(model: Any) -> str:
    if model.train is None:
        return f"pretrained ({model.weights.source})"
    return "trained here" + (" + surgery, fine-tuned" if model.surgery else "")


def models() -> list[dict]:
    rows = []
    for path in _files("model"):
        raw = _yaml(path)
        cfg, error = _compose(f"model={path.stem}")
        rows.append({"name": path.stem, "description": raw.get("description") or (cfg.model.description if cfg else ""),
                     "task": cfg.model.task.value if cfg else raw.get("task"),
                     "training": training_of(cfg.model) if cfg else f"config error: {error}"})
    return rows


def default_quant(raw: dict) -> Optional[str]:
    """The scheme a target picks in its defaults list (`override /quant@_global_.quant: X`)."""
    for entry in raw.get("defaults") or []:
        if isinstance(entry, dict):
            for key, value in entry.items():
                if key.split()[-1].startswith("/quant"):
                    return value
    return None


def targets() -> list[dict]:
    from stages.formats import FORMATS

    rows = []
    for path in _files("target"):
        raw = _yaml(path)
        cfg, error = _compose(f"target={path.stem}")
        reason = FORMATS.get(cfg.target.format).unavailable(cfg) if cfg else f"config error: {error}"
        rows.append({"name": path.stem, "board": raw.get("board"), "format": raw.get("format"),
                     "quant": cfg.quant.name if cfg else default_quant(raw),
                     "available": reason is None, "unavailable_reason": reason})
    return rows


def quant_schemes() -> list[dict]:
    return [{"name": p.stem, "scheme": raw.get("scheme"), "description": raw.get("description", "")}
            for p, raw in ((p, _yaml(p)) for p in _files("quant"))]


def pattern_text(pattern: dict) -> str:
    attrs = ", ".join(f"{k}={v}" for k, v in sorted((pattern.get("attrs") or {}).items()))
    return f"{pattern.get('op')}({attrs})" if attrs else str(pattern.get("op"))


def rewrites() -> list[dict]:
    return [{"name": p.stem, "kind": raw.get("kind", "graph"),
             "removes": [pattern_text(r) for r in raw.get("removes") or []], "description": raw.get("description", "")}
            for p, raw in ((p, _yaml(p)) for p in _files("rewrite"))]


def catalog() -> dict[str, list[dict]]:
    return {"models": models(), "targets": targets(), "quant": quant_schemes(), "rewrites": rewrites()}


def print_tables(data: dict[str, list[dict]]) -> None:
    """Rich tables on stdout: this listing is the command's output, not a log."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)

    def table(title: str, columns: tuple[str, ...], rows: list[list[str]]) -> None:
        t = Table(title=title, title_justify="left")
        for col in columns:
            t.add_column(col, overflow="fold")
        for row in rows:
            t.add_row(*row)
        console.print(t)

    table("models (conf/model)", ("name", "task", "training", "description"),
          [[m["name"], m["task"] or "", m["training"], m["description"]] for m in data["models"]])
    table("targets (conf/target)", ("name", "board", "format", "default quant", "toolchain here"),
          [[t["name"], t["board"] or "", t["format"] or "", t["quant"] or "",
            "[green]yes[/]" if t["available"] else "[red]no[/] (see below)"] for t in data["targets"]])
    for t in data["targets"]:
        if not t["available"]:
            console.print(f"  [bold]{t['name']}[/]: {t['unavailable_reason']}")
    table("quant schemes (conf/quant)", ("name", "scheme", "description"),
          [[q["name"], q["scheme"] or "", q["description"]] for q in data["quant"]])
    table("rewrites (conf/rewrite)", ("name", "kind", "removes", "description"),
          [[r["name"], r["kind"], ", ".join(r["removes"]), r["description"]] for r in data["rewrites"]])


@cli("list")
def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.list", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    args = parser.parse_args(argv)
    data = catalog()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_tables(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
