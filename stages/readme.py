"""The README's measured tables, generated from the build's outputs (never typed by hand).

``python -m stages.readme`` rewrites every block of README.md between a marker line
``<!-- generated: NAME (python -m stages.readme) -->`` and ``<!-- end generated -->`` with the table
NAME, made from ``artifacts/``: ``verdicts`` (one row per build: its gold set, n, distinct sources,
each budgeted quantity with its 95 % interval against its bound, the validation split, the verdict),
``device`` (each Pi build's float, device-true, whole-set and build-host numbers side by side),
``latency`` (this build machine's latency and speed-up against PyTorch eager) and ``missed``
(conf/builds.yaml's builds that miss their budget: each one's verdict from its own metrics.json, where
it was built on request, beside what was tried) and ``profile`` (the build profile's ten slowest stage
runs) and ``faces`` (the face apps, both detector families, from faces.json) and ``arm64_timing``
(the arm64 userland's set-up phases and the cross-check's run, from the build profile and arm64.json). ``--check`` only
says whether the README is up to date with the artifacts (exit 1 if not).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable, Optional

from stages.core.errors import BuildError
from stages.core.fileio import write_text
from stages.core.layout import PROJECT_ROOT, Layout
from stages.core.log import cli, console
from stages.report import NA, build_row, md_table, read_json, size_text, speedup_text

MARKER = re.compile(r"^<!-- generated: (\w+) \(python -m stages\.readme\) -->\n(.*?)^<!-- end generated -->$",
                    re.S | re.M)
# what each budget bound measures, in metrics.json's budget.quantities, and how it is shown
BOUNDS = (("drop", "max_drop", "top-1 drop, points", "≤", ".2f"),
          ("agreement", "min_agreement", "agreement", "≥", ".3f"),
          ("confident_agreement", "min_confident_agreement", "confident agreement", "≥", ".3f"),
          ("top1_in_top5", "min_top1_in_top5", "float top-1 in top-5", "≥", ".3f"),
          ("cosine", "min_cosine", "mean cosine", "≥", ".4f"),
          ("error", "max_error", "error vs float", "≤", ".2f"))


def quantity_lines(metrics: dict, quantities: Optional[dict] = None) -> list[str]:
    """Each bound the model's budget sets: 'name value [lo, hi] (bound)', from the build's metrics (the whole
    gold set's, or ``quantities`` measured elsewhere: on the emulated board, with this host's kernels)."""
    budget = metrics.get("budget") or {}
    elsewhere = quantities is not None  # not the whole set's: every quantity says its own n
    quantities = quantities if elsewhere else budget.get("quantities") or {}
    lines = []
    for name, key, label, sign, spec in BOUNDS:
        bound, q = budget.get(key), quantities.get(name)
        if bound is None or (name == "drop" and not budget.get("metric")) or not q or q.get("value") is None:
            continue
        ci = q.get("ci95")
        interval = f" [{ci[0]:{spec}}, {ci[1]:{spec}}]" if ci and None not in ci else ""
        n = f" n={q['n']}" if (name == "confident_agreement" or elsewhere) and q.get("n") is not None else ""
        lines.append(f"{label} {q['value']:{spec}}{interval}{n} ({sign} {bound:g})")
    return lines


def plan(root: Path) -> dict:
    """conf/builds.yaml of the project whose artifacts folder is ``root``."""
    import yaml

    return yaml.safe_load((root.parent / "conf" / "builds.yaml").read_text(encoding="utf-8")) or {}


def default_builds(root: Path) -> list[tuple[str, str, str]]:
    """The default build's (model, target, quant), in conf/builds.yaml's order."""
    return [(b["model"], b["target"], b["quant"]) for b in (plan(root).get("builds") or {}).values()]


def board_check(arm64: Optional[dict], model: str, target: str, quant: str) -> str:
    """The emulated board's check of a Pi build (artifacts/arm64.json): per CPU, n, and its agreement with
    the run that judged the build, with the 95 % interval; n/a for a build no emulated CPU runs."""
    rows = [r for r in (arm64 or {}).get("results") or []
            if (r.get("model"), r.get("target"), r.get("quant")) == (model, target, quant)]
    cells = []
    for r in rows:
        agreement = (r.get("device_true") or {}).get("reference_agreement") or {}
        if agreement.get("value") is None:
            continue
        lo, hi = agreement["ci95"]
        cells.append(f"{r['cpu']}: {agreement['k']}/{agreement['n']} [{lo:.2f}, {hi:.2f}]"
                     + ("" if r.get("mismatch") is None else f" FAIL: {r['mismatch']}"))
    return "; ".join(cells) or NA


def verdict_rows(root: Path) -> list[list[str]]:
    rows = []
    arm64 = read_json(root / "arm64.json")
    for model, target, quant in default_builds(root):
        metrics = read_json(Layout(root, model, target, quant).metrics)
        if not metrics:
            continue
        splits = metrics.get("splits") or {}
        verdict = "PASS" if metrics.get("passed") else "FAIL: " + "; ".join(metrics.get("failures") or [])
        rows.append([f"{model} / {target} / {quant}", metrics.get("dataset") or NA, f"{metrics.get('n', NA):,}",
                     str(metrics.get("sources") or NA), "; ".join(quantity_lines(metrics)) or NA,
                     splits.get("validation") or NA, metrics.get("verdict_from") or NA,
                     board_check(arm64, model, target, quant), verdict])
    return rows


def verdicts(root: Path) -> str:
    return md_table(("build", "gold set", "n", "sources", "budgeted quantities [95 % CI] (bound)", "validation split",
                     "judged by", "emulated board: decisions as judged, on n gold inputs [95 % CI]", "verdict"),
                    verdict_rows(root))


def host_text(metrics: dict) -> str:
    """The build host's side of a build: its INT8 arithmetic, and its fused kernels' numbers where they are
    not the execution that judged the build."""
    host = metrics.get("build_host") or {}
    isa = host.get("int8_arithmetic") or {}
    where = f"{isa.get('cpu') or NA} ({'VNNI' if isa.get('vnni') else 'no VNNI'}), {host.get('backend') or NA}"
    if not host.get("budget"):
        return f"{where}: the judged run itself"
    return f"{where}: " + ("; ".join(quantity_lines(metrics, host["budget"])) or NA)


def device_rows(root: Path) -> list[list[str]]:
    """One row per Pi build (a metrics.json with a device-true run): the default builds, in conf/builds.yaml's
    order, or every build in the tree where no conf/ is beside it (the report of a copied artifacts folder)."""
    from stages.report import build_keys

    rows = []
    keys = default_builds(root) if (root.parent / "conf" / "builds.yaml").exists() else build_keys(root)
    for model, target, quant in keys:
        metrics = read_json(Layout(root, model, target, quant).metrics)
        device = (metrics or {}).get("device_true")
        if not device:
            continue
        metric = (metrics.get("budget") or {}).get("metric")
        float_text = f"{metric} {metrics['float'][metric]:.2f} %" if metric and metric in metrics.get("float", {}) \
            else "no labels (fidelity set)"
        if device.get("ran"):
            reproduced = device.get("reference_agreement") or {}
            board = (f"{device['cpu']}, {device['backend_version']}, n = {device['n']} of {device['of']:,}: "
                     + "; ".join(quantity_lines(metrics, device["quantities"]))
                     + f"; decisions as judged {reproduced.get('k')}/{reproduced.get('n')}"
                     + ("" if device.get("mismatch") is None else f" (does not reproduce: {device['mismatch']})"))
        else:
            board = f"not run: {device.get('reason')}"
        rows.append([f"{model} / {target} / {quant}", float_text, board,
                     f"{metrics.get('n', NA):,} inputs: " + ("; ".join(quantity_lines(metrics)) or NA),
                     host_text(metrics), metrics.get("verdict_from") or NA,
                     "PASS" if metrics.get("passed") else "FAIL"])
    return rows


DEVICE_COLUMNS = ("build", "float (whole set)", "device-true: emulated board CPU [95 % CI]",
                  "whole gold set, as judged [95 % CI]", "build host (its ISA): fused kernels [95 % CI]",
                  "the verdict is taken from", "verdict")
NO_DEVICE_ROWS = "No Pi build with a device-true run."
DEVICE_LINE = ("Each Pi build ran on its board's emulated CPU through the board's runtime install (evaluate). Its numbers "
               "decide when they resolve the budget; otherwise the whole gold set's execution decides, if the board "
               "reproduced it. This build host's fused kernels never decide: they are shown with the host's ISA.")


def device(root: Path) -> str:
    """Each Pi build side by side: float, the device-true run on the emulated board CPU, the execution that
    ran the whole gold set, and this build host's fused kernels (with its ISA); and what decided."""
    rows = device_rows(root)
    return md_table(DEVICE_COLUMNS, rows) if rows else NO_DEVICE_ROWS


def latency(root: Path) -> str:
    rows = []
    for model, target, quant in default_builds(root):
        row = build_row(root, model, target, quant)
        if row["status"] == "not converted":
            continue
        ms = NA if row["latency_ms"] is None else (f"({row['latency_ms']:.2f})" if row["latency_unreliable"]
                                                    else f"{row['latency_ms']:.2f}")
        eager = NA if row["torch_eager_fp32_ms"] is None else f"{row['torch_eager_fp32_ms']:.2f}"
        rows.append([f"{model} / {target} / {quant}", row["format"] or NA, size_text(row["size_bytes"]), ms, eager,
                     speedup_text(row), row["latency_note"] or row["backend"] or NA])
    return md_table(("build", "format", "size", "artifact ms", "PyTorch FP32 eager ms", "speed-up", "where"), rows)


def missed_measured(root: Path, build: dict) -> str:
    """A missed build's own verdict, from its metrics.json when it was built on request (never typed)."""
    layout = Layout(root, build["model"], build["target"], build["quant"])
    metrics = read_json(layout.metrics)
    if not metrics and layout.metrics.parent.is_dir():
        return "converted here, but evaluate gave no verdict (its log says why; the reason column has it)"
    if not metrics:
        return f"not built here (`python -m stages.evaluate model={build['model']} target={build['target']} " \
               f"quant={build['quant']}`)"
    verdict = "PASS" if metrics.get("passed") else "FAIL"
    device = metrics.get("device_true") or {}
    # the numbers the verdict came from: the board's, when its run resolved the budget and decided alone
    lines = quantity_lines(metrics, device["quantities"] if device.get("ran") and device.get("resolves_budget") else None)
    return (f"{verdict} on {metrics.get('dataset') or NA} (n = {metrics.get('n', NA):,}), judged by "
            f"{metrics.get('verdict_from') or NA}: " + ("; ".join(lines) or NA))


def missed(root: Path) -> str:
    """conf/builds.yaml's `missed:` builds: out of the default build because they miss their model's
    budget. Each row has the build's own verdict from its metrics.json where it was built (on request:
    the default build does not make them), and the levers tried, from conf/builds.yaml (the project's
    conf/ beside the artifacts folder)."""
    rows = [[f"{b['model']} / {b['target']} / {b['quant']}", missed_measured(root, b), b["reason"]]
            for b in (plan(root).get("missed") or {}).values()]
    return md_table(("build", "its verdict, from its metrics.json [95 % CI] (bound)", "what was tried (measured)"),
                    rows) if rows else "None."


def on_request(root: Path) -> str:
    """conf/builds.yaml's `on_request:` builds: they pass when built on request, and stay out of the default
    build for the reason given there. Each row has the build's own verdict from its metrics.json."""
    rows = [[f"{b['model']} / {b['target']} / {b['quant']}", missed_measured(root, b), b["reason"]]
            for b in (plan(root).get("on_request") or {}).values()]
    return md_table(("build", "its verdict, from its metrics.json [95 % CI] (bound)", "why it is built on request"),
                    rows) if rows else "None."


def profile(root: Path) -> str:
    """The build profile (stages/core/profile.py): the ten slowest stage runs of the build, and the total."""
    from stages.core.profile import read_all, slowest

    rows, total = slowest(root)
    if not rows:
        return "No build profile under the artifacts folder: build first (`python -m stages.build`)."
    table = [[f"{r['stage']} {r['build']}", f"{r['wall_s']:.1f}", f"{r['startup_s'] or 0:.1f}", f"{r['work_s']:.1f}",
              ", ".join(f"{k} {v:.1f}" for k, v in r["phases_s"].items()) or NA] for r in rows]
    return (f"{len(read_all(root))} stage runs, {total / 60:.1f} min of stage wall time in all (two run side by side):\n\n"
            + md_table(("stage run", "wall s", "startup s", "work s", "phases (s)"), table))


def arm64_timing(root: Path) -> str:
    """The emulated arm64 board's cost in this build: the userland's last set-up that built something (its
    record in the build profile, stages/arm64/verify.py) and the cross-check stage's own run (arm64.json)."""
    from stages.core.profile import read_all

    rows = []
    setup = next((r for r in read_all(root) if r["stage"] == "arm64-setup"), None)
    if setup:
        rows += [[f"set-up: {name}", f"{seconds:.1f}"] for name, seconds in setup["phases_s"].items()]
        rows.append(["set-up, wall (the root filesystem and the wheelhouse side by side, then the venv)",
                     f"{setup['wall_s']:.1f}"])
    timing = (read_json(root / "arm64.json") or {}).get("timing_s") or {}
    if timing.get("run_s") is not None:
        rows.append(["the cross-check: every Pi artifact on each Pi CPU (one process per CPU, side by side)", f"{timing['run_s']:.1f}"])
        rows.append(["`python -m stages.arm64`, wall" + (" (its set-up reused)" if not timing.get("cold") else ""),
                     f"{timing['total']:.1f}"])
    return md_table(("phase", "seconds"), rows) if rows else "No arm64 set-up or run recorded under the artifacts folder."


def faces(root: Path) -> str:
    """The face apps side by side, one row per detector entry (artifacts/faces.json, stages/faces.py)."""
    from stages.report import FACES_COLUMNS, faces_rows

    rows = faces_rows(read_json(root / "faces.json"))
    return md_table(FACES_COLUMNS, rows) if rows else "No faces.json under the artifacts folder: run `python -m stages.faces`."


TABLES: dict[str, Callable[[Path], str]] = {"verdicts": verdicts, "device": device, "latency": latency,
                                            "missed": missed, "on_request": on_request, "profile": profile,
                                            "faces": faces, "arm64_timing": arm64_timing}


def regenerate(text: str, root: Path) -> str:
    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in TABLES:
            raise BuildError(f"README block {name!r} is not a generated table",
                             hint=f"use one of {', '.join(TABLES)} in the marker line")
        return f"<!-- generated: {name} (python -m stages.readme) -->\n{TABLES[name](root).rstrip()}\n<!-- end generated -->"

    return MARKER.sub(fill, text)


@cli("readme")
def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.readme", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, default=PROJECT_ROOT / "artifacts")
    parser.add_argument("--readme", type=Path, default=PROJECT_ROOT / "README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's tables are not the artifacts'")
    args = parser.parse_args(argv)
    if not args.artifacts.is_dir():
        raise BuildError(f"no artifacts folder at {args.artifacts}", hint="run the build first (dvc repro)")
    text = args.readme.read_text(encoding="utf-8")
    new = regenerate(text, args.artifacts)
    if args.check:
        console.print("README tables up to date" if new == text else "README tables differ from the artifacts")
        return 0 if new == text else 1
    if new != text:
        write_text(args.readme, new)
    console.print(f"{args.readme}: {len(MARKER.findall(new))} generated table(s) from {args.artifacts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
