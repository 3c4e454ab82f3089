"""compare: one table over every evaluated build under artifacts/, for comparing quant schemes
(or targets) side by side, whether DVC built them or a Hydra sweep did:

    python -m stages.evaluate -m model=mobilenet_v2 target=rpi4 quant=fp32,fp16,int8_static,int8_entropy
    python -m stages.compare --model mobilenet_v2 --target rpi4 [--md table.md] [--json]
    python -m stages.compare --model mobilenet_v2 --target rpi4 --bench

The table's numbers come from the builds' own metrics.json (written by evaluate): accuracy on the
model's gold set, drop and agreement against float, the artifact's latency and PyTorch FP32
eager's measured in the same evaluate run (so `speedup` is a same-run ratio), and the size.
Those latencies come from separate runs, though, one per build. ``--bench`` re-times every listed
artifact of one model through the board runtime, and PyTorch FP32 eager, in one process in
alternating blocks, so the schemes' latencies compare with each other as well as with eager.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from stages.core.errors import BuildError
from stages.core.layout import PROJECT_ROOT
from stages.core.log import cli

ARTIFACTS_DIR = PROJECT_ROOT / "artifacts"  # conf/config.yaml `artifacts`

COLUMNS = ("model", "target", "quant", "n", "top-1 float → artifact", "drop", "agreement", "cosine",
           "latency ms (eager)", "speedup", "size MB", "kept float", "budget")


def collect(root: Path, model: Optional[str] = None, target: Optional[str] = None) -> list[dict]:
    """The metrics of each build under ``root`` (``<model>/<target>/<quant>/metrics.json``), filtered."""
    rows = []
    for path in sorted(root.glob("*/*/*/metrics.json")):
        m_name, t_name, _ = path.parent.relative_to(root).parts
        if m_name.startswith("_") or (model and m_name != model) or (target and t_name != target):
            continue
        rows.append(json.loads(path.read_text()))
    return rows


def row_of(m: dict) -> dict[str, Any]:
    lat = m.get("latency_ms") or {}
    artifact_ms, eager_ms = lat.get("artifact"), lat.get("torch_eager_fp32")
    return {
        "model": m["model"], "target": m["target"], "quant": m["quant"], "n": m["n"],
        "top-1 float → artifact": (f"{m['float']['top1']:.2f} → {m['artifact']['top1']:.2f}" if "top1" in m["float"]
                                   else f"error vs float {m['fidelity'].get('error', float('nan')):.2f}"),
        "drop": f"{m['budget']['drop']:.2f}",
        "agreement": f"{m['fidelity']['agreement']:.3f}",
        "cosine": f"{m['fidelity']['cosine_mean']:.4f}",
        "latency ms (eager)": (f"{artifact_ms:.2f} ({eager_ms:.2f})" if artifact_ms and eager_ms
                               else "n/a" + (f" ({lat['note']})" if lat.get("note") else "")),
        "speedup": f"×{m['speedup']:.1f}" if m.get("speedup") else "n/a",
        "size MB": f"{m['size_bytes'] / 1e6:.2f}",
        "kept float": ", ".join(m.get("kept_float") or []) or "-",
        "budget": ("PASS" if m["passed"] else "FAIL") + f" (≤ {m['budget']['max_drop']})",
    }


def markdown(rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    from stages.report import md_table

    return md_table(columns, [[str(r[c]) for c in columns] for r in rows]) + "\n"


def markdown_of(rows: list[dict]) -> str:
    """The --bench table; an unreliable timing (stages/core/bench.py) says why under it."""
    columns = tuple(c for c in rows[0] if c != "unreliable_because")
    why = sorted({w for r in rows for w in r.get("unreliable_because") or []})
    return markdown(rows, columns) + "".join(f"unreliable: {w}\n" for w in why)


def print_table(rows: list[dict]) -> None:
    from rich.table import Table

    from stages.core.log import console, cli

    table = Table(title="builds under artifacts/ (latency: this machine; speedup vs PyTorch FP32 eager, same run)",
                  title_justify="left")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("model", "target", "quant", "kept float") else "right")
    for r in rows:
        table.add_row(*(str(r[c]).replace("PASS", "[green]PASS[/]").replace("FAIL", "[red]FAIL[/]")
                        if c == "budget" else str(r[c]) for c in COLUMNS))
    console.print(table)


def bench(metrics: list[dict], runs: int, artifacts: Path) -> list[dict]:
    """Latency of each artifact (board runtime) and of PyTorch FP32 eager, timed together in one run."""
    import os

    import torch

    from runtime import Manifest, load
    from stages.core.bench import paired_timing
    from stages.core.cli import load as load_config
    from stages.core.datasets import gold_images, preprocess_for
    from stages.core.layout import Layout
    from stages.core.models import float_module

    if len({m["model"] for m in metrics}) != 1:
        raise SystemExit("--bench times one model's builds against its PyTorch eager: give --model")
    targets = sorted({m["target"] for m in metrics})
    cfg = load_config([f"model={metrics[0]['model']}", f"target={targets[0]}"])
    # One thread count for every candidate, or the ratios compare thread pools, not artifacts.
    threads = max(1, min(os.cpu_count() or 1, *(load_config([f"target={t}"]).target.runtime.threads for t in targets)))
    torch.set_num_threads(threads)
    _, image, _ = gold_images(cfg.model.gold)[0]
    module = float_module(cfg.model, Layout.of(artifacts, cfg.model.name, "", "", "").weights)
    x_float = torch.from_numpy(preprocess_for(cfg.model.input)(image))
    fns = {"torch_eager_fp32": lambda: module(x_float)}
    for m in metrics:
        if (m.get("latency_ms") or {}).get("artifact") is None:
            continue  # a simulator's artifact: no latency here to compare
        folder = artifacts / m["model"] / m["target"] / m["quant"]
        session = load(next(folder.glob("model.*")), threads=threads)
        x = Manifest.read(folder / "manifest.json").preprocessor()(image)
        fns[f"{m['target']}/{m['quant']}"] = lambda s=session, x=x: s.run(x)
    with torch.no_grad():
        timing = paired_timing(fns, warmup=10, runs=runs)
    ms, eager = timing["ms"], timing["ms"]["torch_eager_fp32"]
    return [{"build": name, "ms": round(v, 4), "speedup_vs_eager": round(eager / v, 2), "threads": threads,
             "spread": timing["spread"][name], "other_cpu_share": timing["other_cpu_share"],
             "reliable": timing["reliable"], "unreliable_because": timing["unreliable_because"]}
            for name, v in ms.items()]


@cli("compare")
def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="only this model's builds")
    parser.add_argument("--target", help="only this target's builds")
    parser.add_argument("--artifacts", type=Path, default=ARTIFACTS_DIR, help="the artifacts folder (default: %(default)s)")
    parser.add_argument("--md", type=Path, help="also write the table as markdown to this file")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    parser.add_argument("--bench", action="store_true",
                        help="re-time a model's artifacts (all targets, or --target) and PyTorch FP32 eager "
                             "together, in one run (needs --model)")
    parser.add_argument("--runs", type=int, default=100, help="--bench: timed calls per candidate (default: %(default)s)")
    args = parser.parse_args(argv)
    args.artifacts = args.artifacts.resolve()
    metrics = collect(args.artifacts, args.model, args.target)
    if not metrics:
        raise BuildError(f"no evaluated builds under {args.artifacts}"
                         + (f" for model={args.model}" if args.model else "")
                         + (f" target={args.target}" if args.target else ""),
                         hint="run `dvc repro` or `python -m stages.evaluate ...` first")
    if args.bench:
        timed = bench(metrics, args.runs, args.artifacts)
        print(json.dumps(timed, indent=1) if args.json else markdown_of(timed), end="\n" if args.json else "")
        return 0
    rows = [row_of(m) for m in metrics]
    if args.md:
        args.md.write_text(markdown(rows))
    if args.json:
        print(json.dumps(rows, indent=1, ensure_ascii=False))
    elif sys.stdout.isatty():
        print_table(rows)
    else:  # a log or a pipe: 13 columns do not fit rich's 80, markdown stays readable
        print(markdown(rows), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
