"""report: one page that says what every build achieved, read back from the artifact tree.

    python -m stages.report [--artifacts artifacts]

Writes ``<artifacts>/report.md`` (images under ``<artifacts>/report/``), ``report.html`` (one
self-contained file: inline CSS, images as data: URIs, works offline) and ``report.json`` (the
table data). Every input is optional, because a build may be partial: a missing or unreadable
file shows as "n/a". The output holds no timestamps and everything is sorted, so the same tree
gives the same bytes.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

from stages.core.bench import MAX_OTHER_CPU, MAX_SPREAD
from stages.core.fileio import write_bytes, write_json, write_text
from stages.core.layout import PROJECT_ROOT, Layout
from stages.core.log import console, track, user_error, cli

IMAGE_DIR = "report"  # under the artifact root, beside report.md, which links into it
SVG_SALT = "edgebuild-report"  # fixed ids inside the SVGs: same data, same bytes
NA = "n/a"
# A build's status, in summary order, and its HTML cell class.
STATUS_CLASS = {"pass": "pass", "fail": "fail", "not evaluated": "pending", "not converted": "pending"}
ACCURACY_POINTS = {"trained": "trained", "before_surgery": "before surgery", "after_surgery": "after surgery",
                   "after_finetune": "after fine-tune"}
RKNN_ANALYSIS = Path("rknn_accuracy_analysis") / "error_analysis.txt"


# ---------------------------------------------------------------- reading the tree
def read_json(path: Path) -> Any:
    """The file's JSON, or None when it is missing or unreadable (a partial build is normal)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        console.print(f"[yellow]report: skipping unreadable {path}: {exc}[/]")
        return None


def _subdirs(path: Path) -> list[str]:
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def build_keys(root: Path) -> list[tuple[str, str, str]]:
    """Every (model, target, quant) with an artifact folder or a per-build intermediate folder."""
    keys = set()
    for model in _subdirs(root):
        if model == "_build":
            continue
        for target in _subdirs(root / model):
            for quant in _subdirs(root / model / target):
                if any((root / model / target / quant / n).exists() for n in ("metrics.json", "manifest.json")):
                    keys.add((model, target, quant))
    marks = ("build.json", "rewrite.json", "quantize.json", "prepare.json")
    for model in _subdirs(root / "_build"):
        for target in _subdirs(root / "_build" / model):
            for quant in _subdirs(root / "_build" / model / target):
                if any((root / "_build" / model / target / quant / n).exists() for n in marks):
                    keys.add((model, target, quant))
    return sorted(keys)


def kept_float(quantize: Optional[dict], config_quant: dict) -> Any:
    """The nodes the quantizer left in float: whatever the quantize report says, else the config's request."""
    if quantize is None:
        return None
    if quantize.get("scheme") == "none":
        return "all (fp32)"
    for key in ("kept_float", "exclude_nodes"):
        if key in quantize:
            return quantize[key]
    if quantize.get("scheme") == "vendor":
        return "set by the toolkit"
    return list(config_quant.get("exclude_nodes") or [])


def rewrites_of(report: Optional[dict]) -> Optional[list[dict]]:
    """The rewrite stage's entries, less the changed-node lists (the count says enough here)."""
    if report is None:
        return None
    keep = ("n_changed", "max_abs_error", "latency_ms")
    return [{"rewrite": entry.get("rewrite") or entry.get("fn") or NA, **{k: entry[k] for k in keep if k in entry}}
            for entry in report.get("applied", []) if isinstance(entry, dict)]


def build_row(root: Path, model: str, target: str, quant: str) -> dict:
    """One table row: the numbers of one build, None where the file that holds them is missing."""
    layout = Layout(root, model, target, quant)
    metrics = read_json(layout.metrics) or {}
    manifest = read_json(layout.manifest) or {}
    build = read_json(layout.build_config) or {}
    quantize = read_json(layout.quantize_report)
    config = manifest.get("config") or build
    latency = metrics.get("latency_ms") or {}
    budget = metrics.get("budget") or {}
    status = ("pass" if metrics["passed"] else "fail") if "passed" in metrics else (
        "not evaluated" if manifest else "not converted")
    return {
        "model": model, "target": target,
        "board": manifest.get("board") or (config.get("target") or {}).get("board"),
        "quant": quant,
        "scheme": (quantize or {}).get("scheme") or (config.get("quant") or {}).get("scheme"),
        "format": metrics.get("format") or manifest.get("format") or (config.get("target") or {}).get("format"),
        "dataset": metrics.get("dataset"), "n": metrics.get("n"),
        "float_top1": (metrics.get("float") or {}).get("top1"),
        "top1": (metrics.get("artifact") or {}).get("top1"),
        "drop": budget.get("drop") if budget.get("metric", "top1") else None,  # no metric (head pose): no drop
        "max_drop": budget.get("max_drop"),
        "agreement": (metrics.get("fidelity") or {}).get("agreement"),
        "intervals": metrics.get("intervals") or {},
        "min_agreement": budget.get("min_agreement"),
        "budget_bounds": {k: budget.get(k) for k in ("min_confident_agreement", "min_top1_in_top5", "min_cosine")},
        "quantities": budget.get("quantities") or {},
        "sources": metrics.get("sources"), "sanity": metrics.get("sanity"),
        "cosine_mean": (metrics.get("fidelity") or {}).get("cosine_mean"),
        "error": (metrics.get("fidelity") or {}).get("error"), "max_error": budget.get("max_error"),
        "latency_ms": latency.get("artifact"), "torch_eager_fp32_ms": latency.get("torch_eager_fp32"),
        "latency_note": latency.get("note") or "", "backend": latency.get("backend"),
        "latency_unreliable": bool(latency.get("unreliable_because")),
        "speedup": metrics.get("speedup"),
        "size_bytes": metrics.get("size_bytes") or manifest.get("size_bytes"),
        "rewrites": rewrites_of(read_json(layout.rewrite_report)),
        "kept_float": kept_float(quantize, config.get("quant") or {}),
        "toolchain": manifest.get("toolchain"),
        "status": status, "failures": metrics.get("failures") or [],
    }


def not_built_entry(root: Path, model: str, target: str, quant: str) -> Optional[dict]:
    """The prepare stage's record for a target whose toolchain is not here, or None if it was built."""
    layout = Layout(root, model, target, quant)
    prepared = read_json(layout.prepare_report)
    if not prepared or prepared.get("built", True) or layout.metrics.exists() or layout.manifest.exists():
        return None
    return {"model": model, "target": target, "quant": quant, "board": prepared.get("board"),
            "format": prepared.get("format"),
            "reason": prepared.get("reason") or NA, "prepared": list(prepared.get("prepared") or [])}


def training_entry(root: Path, model: str) -> Optional[dict]:
    report = read_json(Layout(root, model, "_").train_report)
    if not isinstance(report, dict):
        return None
    accuracy = dict(report.get("accuracy") or {})
    return {"model": model, "weights": report.get("weights"), "dataset": accuracy.pop("dataset", None),
            "accuracy": accuracy, "epochs": list(report.get("epochs") or []), "surgery": report.get("surgery") or {},
            "parameters": report.get("parameters")}


def trained_here(t: dict) -> bool:
    """The train stage also records pretrained models (no epochs, no accuracy): those get one line."""
    return bool(t["epochs"] or t["accuracy"])


def pretrained_line(training: list[dict]) -> str:
    names = [f"{t['model']} (weights: {t['weights'] or NA})" for t in training if not trained_here(t)]
    return f"Pretrained, not trained here: {', '.join(names)}." if names else ""


def rknn_layers(path: Path) -> list[dict]:
    """Per-layer cosine ("entire": error accumulated from the input) from the RKNN toolkit's analysis."""
    rows = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return rows
    for line in lines:
        found = re.match(r"\[([^\]]+)\]\s+(\S+)\s+(-?[\d.]+)\s*\|", line)
        if found:
            rows.append({"tensor": found[2], "node": found[1], "cosine": float(found[3])})
    return rows


def divergence_entry(root: Path, model: str, target: str, quant: str) -> Optional[dict]:
    """Per-layer cosine vs float of one quantized artifact: ours (ORT QDQ) or the RKNN simulator's."""
    analysis = Layout(root, model, target, quant).analysis_dir
    layers = read_json(analysis / "layer_divergence.json")
    source = "ONNX Runtime QDQ vs float"
    if not layers:
        layers, source = rknn_layers(analysis / RKNN_ANALYSIS), "RKNN simulator vs float (accumulated)"
    layers = [r for r in layers or [] if isinstance(r, dict) and isinstance(r.get("cosine"), (int, float))]
    if not layers:
        return None
    worst = min(layers, key=lambda r: r["cosine"])
    return {"model": model, "target": target, "quant": quant, "source": source, "cosines": [r["cosine"] for r in layers],
            "worst": {"tensor": worst.get("tensor"), "cosine": worst["cosine"]}}


def build_report(root: Path, board_dir: Optional[Path] = None) -> dict:
    """Everything the report shows, as plain data (report.json is exactly this)."""
    from stages import board_results

    root = Path(root)
    builds, not_built, divergence = [], [], []
    for model, target, quant in build_keys(root):
        skipped = not_built_entry(root, model, target, quant)
        if skipped:
            not_built.append(skipped)
            continue
        builds.append(build_row(root, model, target, quant))
        layers = divergence_entry(root, model, target, quant)
        if layers:
            divergence.append(layers)
    training = [t for t in (training_entry(root, m) for m in _subdirs(root / "_build")) if t]
    notes = sorted({b["latency_note"] for b in builds if b["latency_ms"] is None and b["latency_note"]}
                   | ({UNRELIABLE} if any(b["latency_unreliable"] for b in builds) else set()))
    from stages.readme import device_rows

    return {"builds": builds, "not_built": not_built, "training": training, "divergence": divergence,
            "device": device_rows(root),
            "latency_notes": notes, "arm64": read_json(root / "arm64.json"), "faces": read_json(root / "faces.json"),
            **({"boards": board_results.read(board_dir)} if board_dir else {})}


# ---------------------------------------------------------------- formatting (shared by markdown and HTML)
ARM64_COLUMNS = ("build", "emulated CPU", "n", "max abs diff vs x86 reference", "top-1 agreement vs x86 reference",
                 "device-true: agreement vs float [95 % CI], cosine", "agreement vs x86 host kernels", "top-1 % x86 reference → arm64", "arm64 backend",
                 "runtime verify on arm64", "emulated ms/input")


def verify_text(result: Optional[dict]) -> str:
    """A `runtime verify` result in one cell: PASS/FAIL, and on how many golden inputs."""
    if not result:
        return NA
    golden = result.get("golden") or {}
    verdict = "PASS" if result.get("passed") else "FAIL: " + "; ".join(result.get("failures", [])[:2])
    return f"{verdict} ({golden.get('n', '?')} of {golden.get('of', '?')} golden)" if golden else verdict


def device_true_text(device: Optional[dict]) -> str:
    """The emulated board's outputs against float on its subset: agreement with its interval, and cosine."""
    quantities = (device or {}).get("quantities") or {}
    agreement, cosine = quantities.get("agreement") or {}, quantities.get("cosine") or {}
    if agreement.get("value") is None:
        return NA
    lo, hi = agreement.get("ci95") or (None, None)
    interval = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
    return f"{agreement['value']:.3f}{interval}" + (f", {cosine['value']:.4f}" if cosine.get("value") is not None else "")


def arm64_lines(arm64: Optional[dict]) -> tuple[str, list[list[str]]]:
    """The arm64 section: a sentence, and a row per artifact and emulated CPU."""
    if not arm64:
        return "Not checked on arm64: run `python -m stages.arm64` (or `dvc repro`).", []
    if not arm64.get("ran"):
        return f"Not checked on arm64 here: {arm64.get('reason', 'no reason recorded')}.", []
    rows = [[r["build"], r["cpu"] + (" (its board)" if r["board_cpu"] else ""), str(r["n"]),
             f"{r['max_abs_diff']:.2e}", f"{r['top1_agreement']:.3f}", device_true_text(r.get("device_true")),
             f"{r['host_x86']['top1_agreement']:.3f}" if r.get("host_x86") else NA,
             NA if r["top1_x86"] is None else f"{r['top1_x86']:.1f} → {r['top1_arm64']:.1f}",
             r["backend_arm64"] + (f" ({r['backend_version_arm64']})" if r.get("backend_version_arm64") else ""),
             verify_text(r.get("verify")), f"{r['emulated_ms_per_input']:.1f}"] for r in arm64["results"]]
    host = arm64.get("host_x86") or {}
    isa = (f" This host: {host.get('cpu', '?')}, {'with' if host.get('vnni') else 'without'} VNNI, onnxruntime "
           f"{host.get('onnxruntime', '?')}." if host else "")
    return (f"Each Pi artifact on both Pi CPUs in {arm64['userland']}, under {arm64['emulator']}, with `runtime verify` "
            "on each. On its own board CPU the row is evaluate's device-true run (its board subset, against the "
            "execution that judged the whole gold set). On the other CPU it runs up to 100 gold inputs, against the "
            "same artifact on this x86 host: its reference semantics (QDQ as written, no fused kernels), and this "
            f"host's own INT8 kernels.{isa} {arm64['note']}.", rows)


BOARDS_LINE = ("Each row is a `python -m runtime verify` run on a board, against the golden outputs its build "
               "recorded: the board, its backend and the version the build verified with, and latency measured there.")

FACES_COLUMNS = ("detector", "lfw recall % float → artifact", "lfw false positives (of non-faces)",
                 "photos: face found (float / artifact)", "photo IoU artifact vs float", "video (this CPU)",
                 "tracking fps", "detect ms/frame", "IDs stable", "fps with head pose",
                 "ms/frame with pose: decode / detect / track / pose / draw")


def parts_text(tracking: dict, mode: dict) -> str:
    """Where a frame's time goes: the video's decoding, then the app's parts (runtime.apps.track.PARTS)."""
    parts = mode.get("mean_parts_ms") or {}
    if not parts:
        return NA
    return " / ".join(_num(ms, ".1f") for ms in [tracking.get("decode_ms_per_frame"), *parts.values()])


def fps_text(mode: dict) -> str:
    """Frames per second, in parentheses when other processes shared the CPU meanwhile (unreliable)."""
    fps = _num(mode.get("fps"), ".1f")
    return f"({fps})" if mode and mode.get("fps_reliable") is False else fps


def faces_rows(faces: Optional[dict]) -> list[list[str]]:
    """The face apps: one row per detector entry (stages/faces.py)."""
    rows = []
    for d in (faces or {}).get("detectors", []):
        lf, la, photos, tr = d["lfw"]["float"], d["lfw"]["artifact"], d["photos"], d["tracking"]
        ious = [p["iou_artifact_vs_float"] for p in photos if p["iou_artifact_vs_float"] is not None]
        plain, pose = tr.get("detect+track") or {}, tr.get("detect+track+headpose") or {}
        size = tr.get("size")
        rows.append([f"{d['detector']} ({d.get('family', 'mtcnn')})", f"{lf['recall']:.0f} → {la['recall']:.0f}",
                     f"{lf['false_positives']} / {la['false_positives']} (of {la['non_faces']})",
                     f"{sum(p['float_found'] for p in photos)} / {sum(p['artifact_found'] for p in photos)} of {len(photos)}",
                     f"{min(ious):.2f}–{max(ious):.2f}" if ious else NA,
                     f"{size[0]}×{size[1]}, {tr.get('frames')} frames" if size else NA, fps_text(plain),
                     _num(plain.get("mean_detect_ms"), ".1f"),
                     "yes" if plain.get("stable") and (not pose or pose.get("stable")) else "NO",
                     fps_text(pose), parts_text(tr, pose or plain)])
    return rows


FACES_LINE = ("Each detector family (MTCNN's cascade, runtime/tasks/face_detection.py; BlazeFace, "
              "runtime/tasks/blazeface.py) on the float PyTorch net(s) and on the artifact(s), and the tracking app "
              "(runtime/apps/track.py) on a 60-frame video of three real faces moving across a real photo, with and "
              "without head pose on every tracked face. Frames per second are this build machine's CPU, not a board's; in "
              f"parentheses where other processes used more than {100 * MAX_OTHER_CPU:.0f} % of the machine meanwhile (the build runs the "
              "arm64 check beside it), so not a figure to quote.")


def _num(value: Optional[float], spec: str, suffix: str = "") -> str:
    return NA if value is None else f"{value:{spec}}{suffix}"


def size_text(size: Optional[int]) -> str:
    if size is None:
        return NA
    return f"{size / 1e6:.2f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def names_text(names: Any, limit: int = 3) -> str:
    """A short cell for a list of node names (the full list is in report.json)."""
    if names is None:
        return NA
    if isinstance(names, str):
        return names
    if isinstance(names, dict):
        names = sorted(names)
    items = [n if isinstance(n, str) else str(n.get("node") or n.get("name") or json.dumps(n, sort_keys=True))
             if isinstance(n, dict) else str(n) for n in names]
    if not items:
        return "none"
    more = f", … (+{len(items) - limit})" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def rewrites_text(rewrites: Optional[list[dict]]) -> str:
    if rewrites is None:
        return NA
    changed = [f"{r['rewrite']} ×{r['n_changed']}" for r in rewrites if r.get("n_changed")]
    return ", ".join(changed) or "none"


def budget_text(row: dict) -> str:
    if row["status"] == "fail":
        return "FAIL: " + "; ".join(row["failures"])
    return {"pass": "PASS", "not evaluated": "not evaluated", "not converted": "not converted"}[row["status"]]


UNRELIABLE = (f"unreliable: measured under contention or with a spread beyond the limits (its rounds' medians within "
              f"{100 * MAX_SPREAD:.0f} % interquartile range, other processes under {100 * MAX_OTHER_CPU:.0f} % of the CPU); the figure "
              "is shown in parentheses, and the build's metrics.json (latency_ms.unreliable_because) says why")


def latency_text(row: dict, notes: list[str]) -> str:
    if row["latency_ms"] is not None and row.get("latency_unreliable"):
        return f"({row['latency_ms']:.2f}) [{notes.index(UNRELIABLE) + 1}]"
    if row["latency_ms"] is not None:
        return f"{row['latency_ms']:.2f}"
    if row["latency_note"] in notes:
        return f"{NA} [{notes.index(row['latency_note']) + 1}]"
    return NA


COLUMNS = ("model", "target", "quant", "format", "top-1 % float → artifact [95 % CI] n", "drop [95 % CI] (max)",
           "agreement [95 % CI] (min)",
           "latency ms", "speed-up vs torch fp32", "size", "rewrites applied", "kept in float", "toolchain", "budget")


def interval_text(measure: Optional[dict], scale: float = 1.0) -> str:
    """' [lo, hi] n=N': a measure's 95 % interval and n (percent, or fractions with scale 0.01)."""
    if not measure or not measure.get("ci95"):
        return ""
    lo, hi = (v * scale for v in measure["ci95"])
    digits = ".3f" if scale != 1.0 else ".1f"
    return f" [{lo:{digits}}, {hi:{digits}}] n={measure['n']}"


def speedup_text(row: dict) -> str:
    text = _num(row["speedup"], ".1f", "×")
    return f"({text})" if row.get("latency_unreliable") and row["speedup"] is not None else text


def fidelity_text(row: dict) -> str:
    """A fidelity set's bounds (no labels): each quantity with its interval and n, against its bound."""
    q, bounds = row["quantities"], row["budget_bounds"]
    parts = []
    for name, key, label in (("confident_agreement", "min_confident_agreement", "confident agreement"),
                             ("top1_in_top5", "min_top1_in_top5", "float top-1 in top-5"),
                             ("cosine", "min_cosine", "cosine")):
        m = q.get(name)
        if m and m.get("value") is not None:
            lo, hi = m["ci95"]
            parts.append(f"{label} {m['value']:.3f} [{lo:.3f}, {hi:.3f}] n={m['n']} (≥ {_num(bounds.get(key), 'g')})")
    sanity = row.get("sanity")
    if sanity and sanity.get("artifact"):
        parts.append(f"sanity {sanity['dataset']} top-1 {sanity['float']['top1']:.1f} → {sanity['artifact']['top1']:.1f} "
                     f"(n={sanity['n']}, not budgeted)")
    return f"fidelity set, {row.get('sources')} sources: " + "; ".join(parts)


def row_cells(row: dict, notes: list[str]) -> list[str]:
    ci = row.get("intervals") or {}
    top1 = NA if row["top1"] is None else f"{_num(row['float_top1'], '.2f')} → {row['top1']:.2f}" + interval_text(
        (ci.get("artifact") or {}).get("top1"))
    if row["top1"] is None and row.get("error") is not None:  # no labels (head pose): the error vs float
        top1 = f"error vs float {row['error']:.2f} (≤ {_num(row.get('max_error'), 'g')})"
    if row["top1"] is None and row.get("quantities", {}).get("confident_agreement"):
        top1 = fidelity_text(row)
    drop = NA if row["drop"] is None else f"{row['drop']:.2f}{interval_text(ci.get('drop'))} (≤ {_num(row['max_drop'], 'g')})"
    agreement = NA if row["agreement"] is None else (
        f"{row['agreement']:.3f}{interval_text(ci.get('agreement'), 0.01)} (≥ {_num(row['min_agreement'], 'g')})")
    toolchain = ", ".join(f"{k} {v}" for k, v in (row["toolchain"] or {}).items()) or NA
    return [row["model"], row["target"], row["quant"] or NA, row["format"] or NA, top1, drop, agreement,
            latency_text(row, notes), speedup_text(row), size_text(row["size_bytes"]),
            rewrites_text(row["rewrites"]), names_text(row["kept_float"]), toolchain, budget_text(row)]


def rewrite_detail_rows(builds: list[dict]) -> list[list[str]]:
    """Each rewrite a build ran, with its measured output error and ORT latency where recorded."""
    rows = []
    for b in builds:
        for r in b["rewrites"] or []:
            ms = r.get("latency_ms")
            latency = f"{ms['before']:.3f} → {ms['after']:.3f}" if isinstance(ms, dict) and "before" in ms else NA
            rows.append([b["model"], f"{b['target']}/{b['quant']}", r["rewrite"], str(r.get("n_changed", NA)),
                         _num(r.get("max_abs_error"), ".2e"), latency])
    return rows


def training_rows(t: dict) -> list[list[str]]:
    return [[ACCURACY_POINTS.get(k, k.replace("_", " ")), _num(v, ".2f")] for k, v in t["accuracy"].items()]


def epoch_rows(t: dict) -> list[list[str]]:
    return [[str(e.get("phase", NA)), str(e.get("epoch", NA)), _num(e.get("lr"), ".4g"), _num(e.get("loss"), ".4f"),
             _num(e.get("train_accuracy"), ".2f"), _num(e.get("test_accuracy"), ".2f")] for e in t["epochs"]]


def surgery_lines(t: dict) -> list[str]:
    return [f"{name}: {len(mods)} module(s) ({names_text(mods)})" if isinstance(mods, list) else f"{name}: {mods}"
            for name, mods in t["surgery"].items()]


def divergence_rows(divergence: list[dict]) -> list[list[str]]:
    return [[d["model"], f"{d['target']}/{d['quant']}", d["source"], str(len(d["cosines"])), f"{d['worst']['cosine']:.4f}",
             str(d["worst"]["tensor"])] for d in divergence]


def summary_line(report: dict) -> str:
    counts = {s: sum(b["status"] == s for b in report["builds"]) for s in STATUS_CLASS}
    parts = [f"{len(report['builds'])} build(s)"] + [f"{n} {s}" for s, n in counts.items() if n]
    return ", ".join(parts) + f"; {len(report['not_built'])} target(s) not built here."


# ---------------------------------------------------------------- plots
def _label(d: dict) -> str:
    return f"{d['model']} / {d['target']} / {d['quant']}"


def _figure(width: float, height: float):  # noqa: ANN202 - matplotlib is imported lazily
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _svg(fig) -> bytes:  # noqa: ANN001
    import io

    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": SVG_SALT, "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


def _palette(keys: Iterable[str]) -> dict[str, str]:
    from matplotlib import colormaps

    colors = colormaps["tab10"].colors
    return {k: colors[i % len(colors)] for i, k in enumerate(sorted(set(keys)))}


def _log_axis(axis) -> None:  # noqa: ANN001
    """Log scale with plain numbers at 1, 2, 5 x 10^k (the default labels overlap on short ranges)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.axes.set_xscale("log")
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_accuracy_latency(builds: list[dict]) -> Optional[bytes]:
    """One panel per model (gold sets differ, so accuracies only compare within a model)."""
    timed = [b for b in builds if b["latency_ms"] and b["top1"] is not None]
    if not timed:
        return None
    models = sorted({b["model"] for b in timed})
    colors = _palette(f"{b['target']}/{b['quant']}" for b in timed)
    fig = _figure(min(4.2 * len(models), 12.6) + 1.4, 3.8)
    for ax, model in zip(fig.subplots(1, len(models), squeeze=False)[0], models):
        rows = [b for b in timed if b["model"] == model]
        for b in rows:
            color = colors[f"{b['target']}/{b['quant']}"]
            ax.scatter(b["latency_ms"], b["top1"], color=color, s=55, zorder=3, label=f"{b['target']}/{b['quant']}")
            if b["torch_eager_fp32_ms"] and b["float_top1"] is not None:
                ax.scatter(b["torch_eager_fp32_ms"], b["float_top1"], facecolors="none", edgecolors=color, s=55,
                           zorder=3)
                ax.plot([b["torch_eager_fp32_ms"], b["latency_ms"]], [b["float_top1"], b["top1"]], ":",
                        color=color, linewidth=1)
        _log_axis(ax.xaxis)
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("latency, ms (this build machine, log)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, title="target / quant", title_fontsize=8)
    fig.axes[0].set_ylabel("top-1 %, gold set")
    fig.suptitle("Accuracy vs latency: filled = artifact, hollow = PyTorch FP32 eager "
                 "(simulator-only builds have no latency)", fontsize=9)
    return _svg(fig)


def plot_sizes(builds: list[dict]) -> Optional[bytes]:
    sized = sorted((b for b in builds if b["size_bytes"]), key=lambda b: (b["format"] or NA, b["model"], b["target"]))
    if not sized:
        return None
    fig = _figure(7, 1.1 + 0.36 * len(sized))
    ax = fig.add_subplot()
    colors = _palette(b["format"] or NA for b in sized)
    y = list(range(len(sized)))[::-1]
    for yi, b in zip(y, sized):
        fmt = b["format"] or NA
        ax.barh(yi, b["size_bytes"] / 1e6, color=colors[fmt], label=fmt)
        ax.annotate(size_text(b["size_bytes"]), (b["size_bytes"] / 1e6, yi), textcoords="offset points",
                    xytext=(4, -3), fontsize=7)
    ax.set_yticks(y, [_label(b) for b in sized], fontsize=8)
    ax.set_xlim(0, max(b["size_bytes"] for b in sized) / 1e6 * 1.2)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), title="format", fontsize=8, loc="lower right")
    ax.set_xlabel("artifact size, MB")
    ax.set_title("Artifact size per format")
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def divergence_curves(divergence: list[dict]) -> list[tuple[str, bool, list[float]]]:
    """(label, is ORT, cosines), one per distinct curve: builds of one model with identical curves
    (the same QDQ graph on rpi4 and rpi5, one RKNN simulation per platform) share a line."""
    groups: dict[tuple, list[str]] = {}
    for d in divergence:
        groups.setdefault((d["model"], d["source"], tuple(d["cosines"])), []).append(f"{d['target']}/{d['quant']}")
    return [(f"{model} / {', '.join(targets)} ({'ORT' if source.startswith('ONNX') else 'RKNN sim'})",
             source.startswith("ONNX"), list(cosines)) for (model, source, cosines), targets in groups.items()]


def plot_divergence(divergence: list[dict]) -> Optional[bytes]:
    if not divergence:
        return None
    fig = _figure(8, 4.2)
    ax = fig.add_subplot()
    for label, ort, cosines in divergence_curves(divergence):
        ax.plot(range(1, len(cosines) + 1), cosines, "-" if ort else "--", linewidth=1.2, label=label)
    ax.set_xlabel("layer, graph order")
    ax.set_ylabel("cosine vs float")
    ax.set_title("Per-layer divergence of the quantized artifacts (solid: ONNX Runtime QDQ, dashed: RKNN simulator)",
                 fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    return _svg(fig)


def plot_training(t: dict) -> Optional[bytes]:
    epochs = [e for e in t["epochs"] if isinstance(e, dict)]
    if not epochs:
        return None
    x = list(range(1, len(epochs) + 1))
    fig = _figure(8, 3.2)
    acc, loss = fig.subplots(1, 2)
    for key, name in (("test_accuracy", f"test ({t['dataset'] or 'gold set'})"), ("train_accuracy", "train")):
        acc.plot(x, [e.get(key) for e in epochs], "o-", label=name)
    loss.plot(x, [e.get("loss") for e in epochs], "o-", color="tab:red")
    boundaries = [i + 0.5 for i in range(1, len(epochs)) if epochs[i].get("phase") != epochs[i - 1].get("phase")]
    after = t["accuracy"].get("after_surgery")
    for axis in (acc, loss):
        for b in boundaries:
            axis.axvline(b, color="gray", linestyle=":", linewidth=1)
        axis.set_xticks(x, [f"{e.get('phase', '')} {e.get('epoch', '')}" for e in epochs], fontsize=7,
                        rotation=30 if len(x) > 6 else 0)
        axis.set_xlim(0.5, len(x) + 0.5)
        axis.grid(alpha=0.3)
    if after is not None and boundaries:
        acc.plot([boundaries[0]], [after], "x", color="black", markersize=8, label="after surgery")
    acc.set_ylabel("accuracy %")
    acc.legend(fontsize=8)
    loss.set_ylabel("training loss")
    fig.suptitle(f"{t['model']}: accuracy and loss per epoch", fontsize=10)
    return _svg(fig)


def render_images(report: dict) -> dict[str, bytes]:
    """Image file name -> SVG bytes, for the images that have data to show."""
    images = {"accuracy_latency.svg": plot_accuracy_latency(report["builds"]),
              "size_per_format.svg": plot_sizes(report["builds"]),
              "layer_divergence.svg": plot_divergence(report["divergence"])}
    for t in report["training"]:
        if trained_here(t):
            images[f"train_{t['model']}.svg"] = plot_training(t)
    return {name: data for name, data in images.items() if data is not None}


# ---------------------------------------------------------------- markdown
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(header: Iterable[str], rows: list[list[str]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: dict, images: dict[str, bytes]) -> str:
    notes = report["latency_notes"]
    out = ["# Build report", "", summary_line(report), "", "## Builds", ""]
    if report["builds"]:
        out += [md_table(COLUMNS, [row_cells(b, notes) for b in report["builds"]]), ""]
        out += [f"[{i}] {note}" + "  " for i, note in enumerate(notes, 1)] + ([""] if notes else [])
        out += ["Latency and speed-up are measured on this build machine, artifact vs PyTorch FP32 eager in one run; "
                "drop is in top-1 points vs float (negative: the artifact scored higher).", ""]
    else:
        out += ["No builds yet.", ""]
    for name, title in (("accuracy_latency.svg", "accuracy vs latency"), ("size_per_format.svg", "size per format")):
        if name in images:
            out += [f"![{title}]({IMAGE_DIR}/{name})", ""]
    details = rewrite_detail_rows(report["builds"])
    if details:
        out += ["## Rewrites", "", md_table(("model", "target / quant", "rewrite", "nodes changed", "max abs output error",
                                             "ORT latency ms before → after"), details), ""]
    if report["divergence"]:
        out += ["## Per-layer divergence", "", f"![per-layer divergence]({IMAGE_DIR}/layer_divergence.svg)", "",
                md_table(("model", "target / quant", "source", "layers", "lowest cosine", "at tensor"),
                         divergence_rows(report["divergence"])), ""]
    if report["training"]:
        pretrained = pretrained_line(report["training"])
        out += ["## Training", ""] + ([pretrained, ""] if pretrained else [])
    for t in filter(trained_here, report["training"]):
        out += [f"### {t['model']}", "", f"Accuracy on {t['dataset'] or NA}"
                + (f"; {t['parameters']:,} parameters." if t["parameters"] else "."), ""]
        out += [md_table(("point", "top-1 %"), training_rows(t)), ""]
        out += [f"- surgery: {line}" for line in surgery_lines(t)] + ([""] if t["surgery"] else [])
        if t["epochs"]:
            out += [md_table(("phase", "epoch", "lr", "loss", "train acc %", "test acc %"), epoch_rows(t)), ""]
        if f"train_{t['model']}.svg" in images:
            out += [f"![training curve of {t['model']}]({IMAGE_DIR}/train_{t['model']}.svg)", ""]
    if faces_rows(report.get("faces")):
        out += ["## Face detection, head pose and tracking", "", FACES_LINE, "",
                md_table(FACES_COLUMNS, faces_rows(report.get("faces"))), ""]
    from stages.readme import DEVICE_COLUMNS, DEVICE_LINE, NO_DEVICE_ROWS

    out += ["## Device-true verdicts (Pi builds, on the board's emulated CPU)", "", DEVICE_LINE, "",
            md_table(DEVICE_COLUMNS, report["device"]) if report.get("device") else NO_DEVICE_ROWS, ""]
    line, rows = arm64_lines(report.get("arm64"))
    out += ["## On arm64 (emulated Raspberry Pi CPUs)", "", line, ""] + ([md_table(ARM64_COLUMNS, rows), ""] if rows else [])
    if report.get("boards") is not None:
        from stages import board_results

        out += ["## On real boards (`python -m runtime verify`)", "", BOARDS_LINE, ""]
        out += [md_table(board_results.COLUMNS, board_results.rows(report["boards"])), ""] if report["boards"] else [
            "No verify.json found in the folder given.", ""]
    out += ["## Not built here", ""]
    if report["not_built"]:
        out += [md_table(("model", "target / quant", "format", "reason"),
                         [[n["model"], f"{n['target']}/{n['quant']}", n["format"] or NA, n["reason"]] for n in report["not_built"]]), ""]
    else:
        out += ["Every listed target was built here.", ""]
    return "\n".join(out)


# ---------------------------------------------------------------- HTML
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1500px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #eef1f5; position: sticky; top: 0; }
tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; white-space: nowrap; }
td.pass { background: #dff3df !important; color: #135e13; font-weight: 600; }
td.fail { background: #f8dcdc !important; color: #8a1010; font-weight: 600; }
td.pending { background: #fff4d6 !important; }
td.small { font-size: 11px; color: #555; }
img.plot { display: block; max-width: 100%; height: auto; margin: 0.5em 0 1.5em; }
.note { color: #555; font-size: 12px; }
"""
NUMERIC = {4, 5, 6, 7, 8, 9}  # column indexes of COLUMNS that hold numbers


def html_table(header: Iterable[str], rows: list[list[str]], classes: Optional[list[list[str]]] = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, cell in enumerate(row):
            cls = classes[i][j] if classes else ""
            attr = f' class="{cls}"' if cls else ""
            cells.append(f"<td{attr}>{html.escape(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def build_classes(row: dict) -> list[str]:
    classes = ["num" if j in NUMERIC else "" for j in range(len(COLUMNS))]
    classes[COLUMNS.index("toolchain")] = "small"
    classes[COLUMNS.index("budget")] = STATUS_CLASS[row["status"]]
    return classes


def html_image(name: str, data: bytes, alt: str) -> str:
    uri = "data:image/svg+xml;base64," + base64.b64encode(data).decode("ascii")
    return f'<img class="plot" alt="{html.escape(alt)}" src="{uri}">'


def render_html(report: dict, images: dict[str, bytes]) -> str:
    esc = html.escape
    notes = report["latency_notes"]
    out = ['<!DOCTYPE html>', '<html lang="en">', '<head>', '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">', '<title>Build report</title>',
           f'<style>{STYLE}</style>', '</head>', '<body>', '<h1>Build report</h1>',
           f'<p>{esc(summary_line(report))}</p>', '<h2>Builds</h2>']
    if report["builds"]:
        out.append(html_table(COLUMNS, [row_cells(b, notes) for b in report["builds"]],
                              [build_classes(b) for b in report["builds"]]))
        out += [f'<p class="note">[{i}] {esc(note)}</p>' for i, note in enumerate(notes, 1)]
        out.append('<p class="note">Latency and speed-up are measured on this build machine, artifact vs PyTorch '
                   'FP32 eager in one run; drop is in top-1 points vs float (negative: the artifact scored '
                   'higher).</p>')
    else:
        out.append("<p>No builds yet.</p>")
    for name, title in (("accuracy_latency.svg", "accuracy vs latency"), ("size_per_format.svg", "size per format")):
        if name in images:
            out.append(html_image(name, images[name], title))
    details = rewrite_detail_rows(report["builds"])
    if details:
        out += ["<h2>Rewrites</h2>", html_table(("model", "target / quant", "rewrite", "nodes changed", "max abs output error",
                                                 "ORT latency ms before → after"), details)]
    if report["divergence"]:
        out += ["<h2>Per-layer divergence</h2>",
                html_image("layer_divergence.svg", images["layer_divergence.svg"], "per-layer divergence"),
                html_table(("model", "target / quant", "source", "layers", "lowest cosine", "at tensor"),
                           divergence_rows(report["divergence"]))]
    if report["training"]:
        out.append("<h2>Training</h2>")
        if pretrained_line(report["training"]):
            out.append(f"<p>{esc(pretrained_line(report['training']))}</p>")
    for t in filter(trained_here, report["training"]):
        params = f"; {t['parameters']:,} parameters." if t["parameters"] else "."
        out += [f"<h3>{esc(t['model'])}</h3>", f"<p>Accuracy on {esc(t['dataset'] or NA)}{esc(params)}</p>",
                html_table(("point", "top-1 %"), training_rows(t))]
        if t["surgery"]:
            out.append("<ul>" + "".join(f"<li>surgery: {esc(line)}</li>" for line in surgery_lines(t)) + "</ul>")
        if t["epochs"]:
            out.append(html_table(("phase", "epoch", "lr", "loss", "train acc %", "test acc %"), epoch_rows(t)))
        name = f"train_{t['model']}.svg"
        if name in images:
            out.append(html_image(name, images[name], f"training curve of {t['model']}"))
    if faces_rows(report.get("faces")):
        out += ["<h2>Face detection, head pose and tracking</h2>", f"<p>{esc(FACES_LINE)}</p>",
                html_table(FACES_COLUMNS, faces_rows(report.get("faces")))]
    from stages.readme import DEVICE_COLUMNS, DEVICE_LINE, NO_DEVICE_ROWS

    out += ["<h2>Device-true verdicts (Pi builds, on the board's emulated CPU)</h2>", f"<p>{esc(DEVICE_LINE)}</p>",
            html_table(DEVICE_COLUMNS, report["device"]) if report.get("device") else f"<p>{esc(NO_DEVICE_ROWS)}</p>"]
    line, rows = arm64_lines(report.get("arm64"))
    out += ["<h2>On arm64 (emulated Raspberry Pi CPUs)</h2>", f"<p>{esc(line)}</p>"]
    if rows:
        out.append(html_table(ARM64_COLUMNS, rows))
    if report.get("boards"):
        from stages import board_results

        out += ["<h2>On real boards (python -m runtime verify)</h2>", f"<p>{esc(BOARDS_LINE)}</p>",
                html_table(board_results.COLUMNS, board_results.rows(report["boards"]))]
    out.append("<h2>Not built here</h2>")
    if report["not_built"]:
        out.append(html_table(("model", "target / quant", "format", "reason"),
                              [[n["model"], f"{n['target']}/{n['quant']}", n["format"] or NA, n["reason"]] for n in report["not_built"]]))
    else:
        out.append("<p>Every listed target was built here.</p>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


# ---------------------------------------------------------------- writing
def plot_tables(report: dict) -> dict[str, str]:
    """CSV files for `dvc plots` (dvc.yaml's top-level plots): training curves and accuracy vs latency."""
    def csv(header: list[str], rows: list[list]) -> str:
        return "\n".join(",".join("" if v is None else str(v) for v in row) for row in [header, *rows]) + "\n"

    tables = {"builds.csv": csv(["build", "top1", "drop", "latency_ms", "size_bytes"],
                                [[f"{b['model']}/{b['target']}/{b['quant']}", b["top1"], b["drop"], b["latency_ms"],
                                  b["size_bytes"]] for b in report["builds"] if b["top1"] is not None])}
    for t in report["training"]:
        if t["epochs"]:
            tables[f"train_{t['model']}.csv"] = csv(
                ["step", "phase", "epoch", "loss", "train_accuracy", "test_accuracy"],
                [[i, e.get("phase"), e.get("epoch"), e.get("loss"), e.get("train_accuracy"), e.get("test_accuracy")]
                 for i, e in enumerate(t["epochs"], 1)])
    return tables


def write_report(root: Path, board_dir: Optional[Path] = None) -> list[Path]:
    """Write report.md, report.html, report.json, report/*.svg and report/*.csv under ``root``; return the paths."""
    root = Path(root)
    report = build_report(root, board_dir)
    for name, text in plot_tables(report).items():
        write_text(root / IMAGE_DIR / name, text)
    images = render_images(report)
    image_dir = root / IMAGE_DIR
    written = []
    for name, data in track(sorted(images.items()), "report plots"):
        write_bytes(image_dir / name, data)
        written.append(image_dir / name)
    for stale in sorted(image_dir.glob("*.svg")) if image_dir.is_dir() else []:
        if stale.name not in images:  # e.g. the training curve of a model that left the tree
            stale.unlink()
    write_text(root / "report.md", render_markdown(report, images))
    write_text(root / "report.html", render_html(report, images))
    write_json(root / "report.json", report)
    return [root / "report.md", root / "report.html", root / "report.json", *written]


@cli("report")
def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", default="artifacts", help="artifact root (relative: to the project)")
    parser.add_argument("--board-results", type=Path, default=None,
                        help="a folder of verify.json files from real boards (`python -m runtime verify`), "
                             "shown beside the build's numbers")
    args = parser.parse_args(argv)
    root = Path(args.artifacts)
    root = root if root.is_absolute() else PROJECT_ROOT / root
    if not root.is_dir():
        return user_error("report", f"no artifact folder at {root}")
    if args.board_results is not None and not args.board_results.is_dir():
        return user_error("report", f"--board-results {args.board_results} is not a folder")
    paths = write_report(root, args.board_results)
    console.print(f"report: {summary_line(read_json(root / 'report.json'))}")
    for path in paths[:3]:
        console.print(f"wrote {path}")
    from stages.core import profile

    # Where the build's time went (stage timings live beside the stamps, outside the report's bytes).
    for line in profile.table_lines(root):
        console.print(line, markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
