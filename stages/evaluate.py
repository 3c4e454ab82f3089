"""evaluate: the gold check. Float PyTorch vs the artifact on the model's gold set, latency of both
measured interleaved in one run, and the model's accuracy budget enforced (non-zero exit on a miss):
every bound within its value, on a gold set large enough to resolve it (stages/core/budget.py).
Evaluate is the only stage that reads the gold set. A model's small labelled ``sanity`` set, when it
has one, is run beside it and reported, never budgeted.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any, Callable

import numpy as np

from stages.core import onnxgraph
from stages.core.bench import paired_timing
from stages.core.cli import hydra_entry
from stages.core.config import Config
from stages.core.datasets import gold_images, preprocess_for
from stages.core.divergence import layer_divergence
from stages.core.errors import BuildError
from stages.core.fileio import write_json
from stages.core.layout import Layout
from stages.core.log import console, track
from stages.core.tasks import intervals, params_of, scoring
from stages.core.pipeline import Stage
from stages.core.profile import phase
from stages.formats import FORMATS, GoldRun
from stages.quantizers import SCHEMES
from stages import reference as float_reference
from stages.core import budget as budget_rule


PER_IMAGE_ALL = 100  # larger gold sets list the first input, then only those where float and artifact disagree
GOLDEN_INPUTS = 32  # gold inputs in golden.npz, for `python -m runtime verify` on the board
DIVERGENCE_INPUTS = 64  # per-layer statistics settle long before 10,000 inputs


def golden_file(cfg: Config, layout: Layout, inputs: list[np.ndarray], judged: GoldRun, host: GoldRun,
                judged_by: str) -> dict:
    """golden.npz beside the artifact: the first gold inputs in the artifact's own input format, the
    outputs the verdict was judged on, and the tolerance a board's run must meet. The tolerance is
    derived from the two executions the build has (the verdict's and this host's kernels, when they
    differ): twice their largest difference, and at least 2 % of the outputs' range."""
    from stages.core.fileio import sha256_file, write_npz

    n = min(GOLDEN_INPUTS, len(inputs))
    expected = judged.outputs[:n]
    spread = float(np.abs(expected.astype(np.float64) - host.outputs[:n]).max()) if host is not judged else 0.0
    atol = max(2.0 * spread, 0.02 * float(np.abs(expected).max()), 1e-6)
    meta = {"verdict_from": judged_by, "atol": atol, "atol_rule": "max(2 x |verdict - build host|, 2 % of range)",
            "task": cfg.model.task.value, **{k: v for k, v in dict(cfg.model.task_params).items()
                                             if isinstance(v, (int, float, str))}}
    write_npz(layout.golden, {"inputs": np.stack(inputs[:n]), "outputs": expected, "meta": np.array(json.dumps(meta))})
    return {"file": layout.golden.name, "sha256": sha256_file(layout.golden), "n": n,
            "atol": atol}


def sanity_row(cfg: Config, task, samples: list, reference: np.ndarray, candidate: np.ndarray) -> dict:  # noqa: ANN001
    """The labelled sanity set: float and artifact scored against hand labels, beside the verdict."""
    accepted, ids = [a for _, _, a in samples], [i for i, _, _ in samples]
    params = params_of(cfg.model)
    return {"dataset": cfg.model.sanity.name, "n": len(samples), "float": task.score(reference, accepted, ids, params),
            "artifact": task.score(candidate, accepted, ids, params),
            "agreement": float(task.agrees(reference, candidate, ids, params).mean()),
            "note": "labelled sanity row: reported, never budgeted"}


def per_image(samples: list, reference: np.ndarray, candidate: np.ndarray) -> list[dict]:
    reference, candidate = reference.reshape(len(reference), -1), candidate.reshape(len(candidate), -1)
    rows = [{"file": f, "accept": sorted(a), "float_top1": int(r.argmax()), "artifact_top1": int(c.argmax())}
            for (f, _, a), r, c in zip(samples, reference, candidate)]
    if len(rows) <= PER_IMAGE_ALL:
        return rows
    return rows[:1] + [r for r in rows[1:] if r["float_top1"] != r["artifact_top1"]][:PER_IMAGE_ALL - 1]


def runtime_gold(cfg: Config, layout: Layout, inputs: list[np.ndarray], threads: int,
                 reference: bool = False) -> GoldRun:
    """Run the artifact through the board's runtime (runtime.load), here on this machine."""
    from runtime import load

    session = load(layout.artifact, threads=threads, reference=reference)
    what = "artifact on the gold set" + (" (reference semantics)" if reference else "")
    outputs = np.concatenate([np.asarray(session.run(x)) for x in track(inputs, what)])
    return GoldRun(outputs, session.backend.name, lambda: session.run(inputs[0]))


def verdict_run(cfg: Config, layout: Layout, inputs: list[np.ndarray], threads: int,
                host: GoldRun) -> tuple[GoldRun, str]:
    """The outputs the budget is judged on, and what they are. A QDQ ONNX artifact is judged by its
    graph's reference semantics (quantize/dequantize as written, no fused kernels): that is what an
    integer device computes, whatever this host's ISA, where this host's fused u8 x s8 kernels are
    not (x86 without VNNI saturates 16-bit sums). Other formats are judged as their backend ran them
    (RKNN: the toolkit's simulator; TorchScript: qnnpack, the board's engine)."""
    from runtime.session import REFERENCE_FORMATS

    if cfg.target.format in REFERENCE_FORMATS and SCHEMES.get(cfg.quant.scheme).qdq:
        return runtime_gold(cfg, layout, inputs, threads, reference=True), "reference semantics of the QDQ graph"
    return host, host.backend


def evaluate(cfg: Config, layout: Layout) -> dict:
    import torch

    from runtime.manifest import Manifest
    from stages.core.models import float_module

    threads = max(1, min(cfg.target.runtime.threads, os.cpu_count() or 1))
    torch.set_num_threads(threads)
    with phase("gold set: load"):
        samples = gold_images(cfg.model.gold)
        sanity = gold_images(cfg.model.sanity) if cfg.model.sanity else []
    n_gold = len(samples)
    samples_all = samples + sanity  # one run of each execution over both sets; split below
    accepted = [acc for _, _, acc in samples]
    ids = [ident for ident, _, _ in samples]
    task, task_params = scoring(cfg.model.task), params_of(cfg.model)
    # The float model gets the model's preprocessing; the artifact gets what its manifest tells a
    # board to feed (for RKNN: uint8 NHWC pixels, normalized on the NPU).
    to_float, to_board = preprocess_for(cfg.model.input), Manifest.read(layout.manifest).preprocessor()
    with phase("gold set: preprocess"):
        float_inputs = [to_float(image) for _, image, _ in samples_all]
        inputs = [to_board(image) for _, image, _ in samples_all]
    module = float_module(cfg.model, layout.weights)  # for the latency pairing; its outputs are the model's
    with phase("float model"):  # once per model, by the reference stage
        reference = float_reference.read(layout, [ident for ident, _, _ in samples_all])
    with phase("artifact: build host"):
        gold = (FORMATS.get(cfg.target.format).gold or runtime_gold)(cfg, layout, inputs, threads)
    with phase("artifact: verdict run"):
        judged, judged_by = verdict_run(cfg, layout, inputs, threads, gold)
    reference, sanity_ref = reference[:n_gold], reference[n_gold:]
    candidate, sanity_out = judged.outputs[:n_gold], judged.outputs[n_gold:]
    host_outputs = gold.outputs[:n_gold]
    inputs, float_inputs = inputs[:n_gold], float_inputs[:n_gold]

    latency: dict = {"artifact": None, "torch_eager_fp32": None}
    conditions: dict = {}
    if gold.timed_call is not None:  # a simulator has no latency worth pairing with PyTorch's
        x0 = torch.from_numpy(float_inputs[0])
        with torch.no_grad(), phase("latency"):
            timing = paired_timing({"artifact": gold.timed_call, "torch_eager_fp32": lambda: module(x0)},
                                   cfg.target.benchmark.warmup, cfg.target.benchmark.runs)
        latency, conditions = timing.pop("ms"), timing

    # The float graph after the target's rewrites, in ONNX Runtime: what the rewrites cost, before quantization.
    with phase("rewritten float graph"):
        rewritten = onnxgraph.run_all(layout.rewritten, float_inputs, cfg.model.input.name)
    float_metrics = task.score(reference, accepted, ids, task_params)
    artifact_metrics = task.score(candidate, accepted, ids, task_params)
    agree = task.compare(reference, candidate, ids, task_params)
    budget = cfg.model.budget
    quantities = budget_rule.measure(budget, task, reference, candidate, accepted, ids, task_params)
    drop = quantities["drop"]["value"] if "drop" in quantities else 0.0
    from stages.core.hostinfo import int8_arithmetic

    build_host = {"int8_arithmetic": int8_arithmetic(), "backend": gold.backend}
    if judged is not gold:  # this host's fused kernels: recorded, labelled as the build host, never the verdict
        build_host.update(artifact=task.score(host_outputs, accepted, ids, task_params),
                          fidelity=task.compare(reference, host_outputs, ids, task_params),
                          budget=budget_rule.measure(budget, task, reference, host_outputs, accepted, ids, task_params))
    metrics = {
        "model": cfg.model.name, "target": cfg.target.name, "quant": cfg.quant.name, "format": cfg.target.format,
        "dataset": cfg.model.gold.name, "n": len(samples),
        "sources": len({ident.split("|")[0] for ident in ids}),
        "splits": {"gold": cfg.model.gold.name, "validation": cfg.model.validation.name,
                   "calibration": cfg.model.calibration.name},
        "task": cfg.model.task.value, "headline": list(task.headline),
        "float": float_metrics, "rewritten": task.score(rewritten, accepted, ids, task_params),
        "artifact": artifact_metrics,
        "diff": {k: artifact_metrics[k] - float_metrics[k] for k in float_metrics},
        "fidelity": agree,
        "intervals": intervals(task, reference, candidate, accepted, ids, task_params, budget.metric),
        "budget": {**asdict(budget), "drop": drop, "quantities": quantities},
        "build_host": build_host,
        "latency_ms": {**latency, "threads": threads, "backend": gold.backend, "runs": cfg.target.benchmark.runs,
                       "note": gold.note, **conditions},
        "speedup": latency["torch_eager_fp32"] / latency["artifact"] if latency["artifact"] else None,
        "size_bytes": layout.artifact.stat().st_size,
        "per_image": per_image(samples, reference, candidate),
        **({"sanity": sanity_row(cfg, task, sanity, sanity_ref, sanity_out)} if sanity else {}),
        "golden": golden_file(cfg, layout, inputs, judged, gold, judged_by),
        **({"analysis": gold.extra} if gold.extra else {}),
    }
    device = None
    if cfg.target.cpu:  # a Pi: the artifact on its board's emulated CPU, through the board's runtime install
        from stages.arm64.board import device_true

        with phase("artifact: device-true run (emulated board CPU)"):
            device = device_true(cfg, layout, inputs, reference, candidate, accepted, ids, metrics["golden"]["atol"])
        metrics["device_true"] = device
    metrics.update(budget_rule.verdict(budget, quantities, judged_by, device))
    failures = metrics["failures"]
    layout.analysis_dir.mkdir(parents=True, exist_ok=True)
    quantized = json.loads(layout.quantize_report.read_text())
    metrics["kept_float"] = quantized.get("kept_float", [])
    if SCHEMES.get(quantized["scheme"]).qdq:
        with phase("layer divergence"):
            layers = layer_divergence(layout.rewritten, layout.quantized, float_inputs[:DIVERGENCE_INPUTS],
                                      cfg.model.input.name)
        write_json(layout.analysis_dir / "layer_divergence.json", layers)
        worst = sorted(layers, key=lambda r: r["cosine"])[:5]
        metrics["layer_divergence"] = {"file": str((layout.analysis_dir / "layer_divergence.json").relative_to(
            layout.root)), "layers": len(layers), "worst": worst}
    write_json(layout.metrics, metrics)
    print_table(metrics)
    if failures:
        raise BuildError(f"{cfg.model.name} on {cfg.target.name} misses its accuracy budget on {cfg.model.gold.name} "
                         f"(n = {len(samples)}): {'; '.join(failures)}",
                         hint=f"see {layout.metrics}; fix the artifact (another quant scheme, calibration or the "
                              "repair); a budget is the model's requirement, not a dial")
    return metrics


COLUMN_NAMES = {"top1": "top-1 %", "top5": "top-5 %", "recall": "recall %", "false_positives": "false positives",
                "mirror_yaw_mae": "mirror yaw err °", "mirror_roll_mae": "mirror roll err °",
                "rotation_roll_gain": "roll per ° turned"}


def print_table(m: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{m['model']} / {m['target']} / {m['quant']}  on {m['dataset']} (n={m['n']})")
    shown = [k for k in m["headline"] if k in m["float"]]
    for col in ("", *(COLUMN_NAMES.get(k, k) for k in shown), "latency ms"):
        table.add_column(col, justify="right")
    eager_ms, artifact_ms = m["latency_ms"]["torch_eager_fp32"], m["latency_ms"]["artifact"]
    for name, key, ms in (("float (torch eager)", "float", eager_ms), ("float ONNX, rewritten", "rewritten", None),
                          ("artifact", "artifact", artifact_ms)):
        table.add_row(name, *(f"{m[key][k]:.2f}" if isinstance(m[key][k], float) else str(m[key][k]) for k in shown), f"{ms:.2f}" if ms else ("" if key == "rewritten" else "n/a"))
    console.print(table)
    status = "[green]PASS[/]" if m["passed"] else "[red]FAIL[/]"
    error = m["fidelity"].get("error")
    console.print(f"{status}  drop {m['budget']['drop']:.2f} (max {m['budget']['max_drop']}), "
                  + (f"error vs float {error:.3f}, " if error is not None else "") +
                  f"agreement {m['fidelity']['agreement']:.3f}, cosine {m['fidelity']['cosine_mean']:.4f}, "
                  f"speedup {('x%.1f' % m['speedup']) if m['speedup'] else 'n/a'}, {m['size_bytes'] / 1e6:.2f} MB"
                  + (f" ({m['latency_ms']['note']})" if m["latency_ms"]["note"] else ""))
    if m["latency_ms"].get("unreliable_because"):
        console.print("[yellow]latency unreliable:[/] " + escape("; ".join(m["latency_ms"]["unreliable_because"])))


STAGE = Stage(
    name="evaluate", scope="build",
    params=("model.module", "model.surgery", "model.input", "model.output", "model.gold", "model.task",
            "model.task_params",
            "model.budget", "model.board_inputs", "model.sanity", "model.validation", "model.calibration", "target.benchmark",
            "target.runtime"),
    needs=("convert", "reference"),
    deps=lambda L: [L.weights, L.reference, L.artifact, L.manifest, L.rewritten, L.quantized, L.quantize_report],
    outs=lambda L: [L.metrics, L.golden, L.analysis_dir],
    run=evaluate,
    doc="gold check + latency + budget",
    code=("runtime", "stages/arm64", "stages/formats", "stages/quantizers", "stages/rewrites/modules.py", "stages/zoo"),
    fanout="builds",
)

if __name__ == "__main__":
    hydra_entry(STAGE)()
