"""arm64: every Raspberry Pi artifact of conf/builds.yaml run where it will run, in an emulated
arm64 Debian 12 userland (qemu-user, one run per Pi CPU: cortex-a72, cortex-a76), through the
runtime installed there from this project, and compared with the same artifact on this x86 host.

The comparison that counts is against the graph's reference semantics on x86 (ONNX artifacts with
graph optimizations off: QDQ run as written, no fused INT8 kernels). This host's fused kernels are
recorded beside it, with the host's ISA: without VNNI their u8 x s8 sums saturate, which a Pi's
integer kernels never do, so x86 and arm64 legitimately differ there (../shared/FACTS.md).

    python -m stages.arm64 [--max-inputs N]      # writes artifacts/arm64.json (the report shows it)

The device-true verdict itself is evaluate's (its metrics.json, on the board's CPU): this stage is the
cross-check, on both Pi CPUs and through `runtime verify`. On the artifact's own board CPU, evaluate's
device-true run already put ``model.board_inputs`` gold inputs through the same runtime in the same
userland, so its row is that run's, from metrics.json, and the emulator only runs `runtime verify`
there. On the other Pi CPU the artifact runs ``model.board_inputs`` of its gold inputs, at most
CROSS_CHECK_INPUTS, evenly spaced across the set (board.subset), compared with x86 input by input.
Per artifact and CPU it records the budget's quantities of the emulated outputs against float, each
with its n and 95 % interval, and the emulated board's agreement with the reference semantics that
judged the whole gold set. The stage fails when the board does not reproduce the reference
(``board_matches_reference``) or `runtime verify` fails, naming the artifact and the CPU.

A Pi artifact is a build whose target names a `cpu`. Emulated timings are recorded as such: they
say nothing about a Pi's speed. A machine that cannot emulate (no root, no binfmt) gets an
arm64.json that says so and why, and no numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from runtime.errors import RuntimeLoadError
from stages.core.errors import BuildError
from stages.core.fileio import write_json
from stages.core.layout import PROJECT_ROOT, Layout
from stages.core.log import console, user_error, cli

from . import board, rootfs

OUT = PROJECT_ROOT / "artifacts" / "arm64.json"
# The last set-up that built something (rootfs, wheelhouse or venv), in the build profile (stages/core/profile.py):
# outside DVC's outputs, like every stage's profile; the README's arm64 timing table reads it.
SETUP_PROFILE = PROJECT_ROOT / "artifacts" / "_build" / "arm64" / ".stamps" / "setup.profile.json"
SETUP_PHASES = {"rootfs": "root filesystem", "wheelhouse": "wheelhouse", "venv": "venv"}
CROSS_CHECK_INPUTS = 100  # per artifact and CPU: a cross-check (evaluate runs the whole board subset)
MIN_INPUTS = 4  # a model may declare fewer board_inputs than this only if its gold set is smaller
WORKER = Path(__file__).with_name("worker.py")


def pi_builds(plan: dict) -> list[dict]:
    """The builds whose target names the CPU of a board qemu can emulate."""
    from stages.core.cli import load

    rows = []
    for key, item in (plan.get("builds") or {}).items():
        target = load([f"target={item['target']}"]).target
        if target.cpu:
            rows.append({"build": key, **item, "board_cpu": target.cpu})
    return rows


def gold_batch(model: str, folder: Path, limit: Optional[int]) -> tuple[np.ndarray, list[set[int]], list[str]]:
    """The model's declared board subset of its gold set (``board_inputs`` evenly spaced, at most ``limit``),
    preprocessed as the artifact's manifest tells a board; with each input's hand labels and id."""
    from runtime import Manifest
    from stages.core.cli import load
    from stages.core.datasets import gold_images

    spec = load([f"model={model}"]).model
    n = min(CROSS_CHECK_INPUTS if limit is None else limit, spec.board_inputs)
    gold = gold_images(spec.gold)
    samples = [gold[i] for i in board.subset(len(gold), n)]
    pre = Manifest.read(folder / "manifest.json").preprocessor()
    return (np.stack([pre(image) for _, image, _ in samples]), [accepted for _, _, accepted in samples],
            [ident for ident, _, _ in samples])


def board_matches_reference(result: dict, labelled: bool) -> Optional[str]:
    """None when `runtime verify` passed on the emulated board and its outputs reproduced the reference
    semantics that judged the artifact (board.reproduces), else why not."""
    verify = result.get("verify") or {}
    if not verify.get("passed"):
        return f"`runtime verify` failed on the board: {'; '.join(verify.get('failures') or ['no result'])}"
    return board.reproduces(labelled, result["top1_agreement"], result["max_abs_diff"],
                            (verify.get("fidelity") or {}).get("atol"), result["n"])


def x86_outputs(artifact: Path, batch: np.ndarray) -> dict[str, Any]:
    """The artifact on this x86 host: with the host's fused kernels, and (for the QDQ ONNX formats) with
    the graph's reference semantics. A `.pt` runs qnnpack here as on the board: that is its reference."""
    from runtime import Manifest, load
    from runtime.session import REFERENCE_FORMATS

    has_reference = Manifest.read(artifact.parent / "manifest.json").format in REFERENCE_FORMATS
    runs: dict[str, Any] = {}
    for kind in ("host", "reference"):
        session = load(artifact, threads=1, reference=kind == "reference" and has_reference)
        runs[kind] = np.concatenate([np.asarray(session.run(x)) for x in batch])
        runs[f"{kind}_backend"] = session.backend.name
    return runs


def compare(build: dict, cpu: str, x86: dict[str, Any], arm: np.ndarray, accepted: list[set[int]], ids: list[str],
            info: dict) -> dict:
    """arm64 against x86 on the model's board subset, scored by the model's task: top-1 and decision
    agreement; for head pose, agreement within the task's degrees. The headline columns compare with x86's
    reference semantics; ``host`` with this host's kernels; ``device_true`` with float."""
    from stages import reference as float_reference
    from stages.core import budget as budget_rule
    from stages.core.cli import load
    from stages.core.metrics import fidelity, wilson
    from stages.core.tasks import params_of, scoring

    n = info.get("n", len(accepted))
    model = load([f"model={build['model']}"]).model
    task, params = scoring(model.task), params_of(model)
    arm, accepted, ids = arm[:n], accepted[:n], ids[:n]
    floats = float_reference.read_some(Layout.of("artifacts", build["model"], "_", "_", "_"), ids)

    def against(ref: np.ndarray) -> dict:
        return {**fidelity(ref.reshape(n, -1), arm.reshape(n, -1)), **task.compare(ref, arm, ids, params)}

    ref, host = x86["reference"][:n], x86["host"][:n]
    same, same_host = against(ref), against(host)
    agreeing = int(np.asarray(task.agrees(ref, arm, ids, params), bool).sum())
    device_true = {"what": f"the emulated {cpu}'s outputs against float on {n} gold inputs, evenly spaced "
                           f"(model.board_inputs: {model.board_inputs})",
                   "n": n, "quantities": budget_rule.measure(model.budget, task, floats, arm, accepted, ids, params),
                   "reference_agreement": {"value": agreeing / n, "k": agreeing, "n": n, "ci95": wilson(agreeing, n)}}
    result = {"build": build["build"], "model": build["model"], "target": build["target"], "quant": build["quant"],
              "artifact": build["artifact"], "cpu": cpu, "board_cpu": cpu == build["board_cpu"], "n": n,
              "reference_x86": x86["reference_backend"], "device_true": device_true,
              "max_abs_diff": same["max_abs_diff"], "top1_agreement": same["agreement"],
              "host_x86": {"backend": x86["host_backend"], "max_abs_diff": same_host["max_abs_diff"],
                           "top1_agreement": same_host["agreement"],
                           "top1": task.score(host, accepted, ids, params).get("top1")},
              "top1_x86": task.score(ref, accepted, ids, params).get("top1"),
              "top1_arm64": task.score(arm, accepted, ids, params).get("top1"),
              "backend_arm64": info["backend"], "backend_version_arm64": info.get("backend_version"),
              "verify": info.get("verify"), "build_code_on_board": info.get("build_code_installed"),
              "machine": info["machine"], "emulated_ms_per_input": round(info["emulated_ms_per_input"], 1)}
    result["mismatch"] = board_matches_reference(result, model.gold.labelled)
    return result


def evaluated(build: dict, info: dict) -> dict:
    """The row of an artifact on its own board CPU: evaluate's device-true run there (metrics.json: the
    model's board subset, through the same runtime in the same userland), with `runtime verify` from
    this stage's emulated run. Its numbers compare with the execution that judged the whole gold set,
    not with this host's kernels (``host_x86`` is None: the other CPU's row has them)."""
    from stages.core.cli import load

    layout = Layout.of("artifacts", build["model"], build["target"], build["quant"], build["artifact"])
    device = (read_metrics(layout.metrics).get("device_true") or {})
    if not device.get("ran") or device.get("cpu") != build["board_cpu"]:
        raise BuildError(f"{layout.metrics} has no device-true run on {build['board_cpu']}: "
                         f"{device.get('reason') or 'evaluate did not run the board subset'}",
                         hint=f"rerun evaluate for {build['build']} (`dvc repro`), on a machine that emulates arm64")
    model = load([f"model={build['model']}"]).model
    agreement = device["reference_agreement"]
    result = {"build": build["build"], "model": build["model"], "target": build["target"], "quant": build["quant"],
              "artifact": build["artifact"], "cpu": build["board_cpu"], "board_cpu": True, "n": device["n"],
              "source": "evaluate's device-true run (metrics.json)",
              "reference_x86": "the execution that judged the whole gold set (metrics.json verdict_from)",
              "device_true": {"what": f"evaluate's run on the emulated {build['board_cpu']}: {device['subset']}",
                              "n": device["n"], "quantities": device["quantities"], "reference_agreement": agreement},
              "max_abs_diff": agreement["max_abs_diff"], "top1_agreement": agreement["value"], "host_x86": None,
              "top1_x86": None, "top1_arm64": device["artifact"].get("top1"),
              "backend_arm64": device["backend"], "backend_version_arm64": device["backend_version"],
              "verify": info.get("verify"), "build_code_on_board": info.get("build_code_installed"),
              "machine": info["machine"], "emulated_ms_per_input": device["emulated_ms_per_input"]}
    result["mismatch"] = board_matches_reference(result, model.gold.labelled)
    return result


def read_metrics(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BuildError(f"{path} does not exist", hint="run `dvc repro` first: evaluate writes it") from None
    except ValueError as exc:
        raise BuildError(f"{path} is not JSON ({exc})", hint="rerun evaluate for it (`dvc repro`)") from None


def setup() -> tuple[Path, str, dict[str, Any]]:
    """The rootfs and the wheelhouse (concurrently: debootstrap and pip download are both network-bound
    at first), then the venv; and how long each took, and whether it was reused."""
    timing: dict[str, Any] = {}

    def timed(name: str, fn, *args):
        start = time.monotonic()
        value, reused = fn(*args)
        timing[f"{name}_s"], timing[f"{name}_reused"] = round(time.monotonic() - start, 1), reused
        return value

    with rootfs.setup_lock(), ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        root_f = pool.submit(timed, "rootfs", rootfs.ensure_rootfs)
        wheels_f = pool.submit(timed, "wheelhouse", rootfs.ensure_wheelhouse)
        root, wheelhouse = root_f.result(), wheels_f.result()
        venv = timed("venv", rootfs.ensure_venv, root, wheelhouse)
        if not all(timing[f"{key}_reused"] for key in SETUP_PHASES):
            from stages.core.profile import record_run

            phases = {label: timing[f"{key}_s"] for key, label in SETUP_PHASES.items() if not timing[f"{key}_reused"]}
            record_run(SETUP_PROFILE, "arm64-setup", time.monotonic() - started, phases)
    return root, venv, timing


def verify(plan: dict, limit: int) -> dict[str, Any]:
    started = time.monotonic()
    builds = pi_builds(plan)
    cpus = sorted({b["board_cpu"] for b in builds})
    root, venv, timing = setup()
    setup_s = time.monotonic() - started
    qemu = rootfs.qemu_version()
    # a work folder of its own, like evaluate's device-true runs (board.py): runs side by side never meet
    inside = f"/opt/edgebuild/work/arm64-{os.getpid()}"
    work = root / inside.lstrip("/")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copy(WORKER, work / "worker.py")
    prepared = []
    for build in builds:
        folder = Layout.of("artifacts", build["model"], build["target"], build["quant"], build["artifact"]).artifact.parent
        if not (folder / build["artifact"]).exists():
            raise BuildError(f"{folder / build['artifact']} does not exist", hint="run `dvc repro` first")
        batch, accepted, ids = gold_batch(build["model"], folder, limit)
        shutil.copytree(folder, work / build["build"])
        np.save(work / build["build"] / "inputs.npy", batch)
        prepared.append((build, folder / build["artifact"], batch, accepted, ids))
    for cpu in cpus:  # on its own board CPU, an artifact's subset already ran in evaluate: `runtime verify` only
        jobs = [{"artifact": f"{inside}/{b['build']}/{b['artifact']}", "outputs": f"{inside}/{b['build']}/{cpu}.npy",
                 **({} if cpu == b["board_cpu"] else {"inputs": f"{inside}/{b['build']}/inputs.npy"})}
                for b, _, _, _, _ in prepared]
        (work / f"jobs-{cpu}.json").write_text(json.dumps(jobs))
    console.print(f"arm64: {len(prepared)} artifacts on {', '.join(cpus)}, in parallel (emulated)")

    def emulate(cpu: str) -> list[dict]:
        out = rootfs.run_isolated(root, [f"{venv}/bin/python", f"{inside}/worker.py", f"{inside}/jobs-{cpu}.json"],
                                  cpu=cpu, timeout=1800)
        return json.loads(out.strip().splitlines()[-1])

    run_started = time.monotonic()
    with ThreadPoolExecutor(len(cpus)) as pool:  # one emulator process per CPU, each in its own mount namespace
        emulated = [pool.submit(emulate, cpu) for cpu in cpus]
        refs = [x86_outputs(artifact, batch) for _, artifact, batch, _, _ in prepared]  # meanwhile, on x86
        infos = dict(zip(cpus, (f.result() for f in emulated)))
    timing["run_s"] = round(time.monotonic() - run_started, 1)
    results = [evaluated(build, info) if cpu == build["board_cpu"] else
               compare(build, cpu, x86, np.load(work / build["build"] / f"{cpu}.npy"), accepted, ids, info)
               for cpu in cpus for (build, _, _, accepted, ids), x86, info in zip(prepared, refs, infos[cpu])]
    shutil.rmtree(work, ignore_errors=True)
    cold = not all(timing[f"{phase}_reused"] for phase in SETUP_PHASES)
    from stages.core.hostinfo import int8_arithmetic

    return {"ran": True, "emulator": qemu, "host_x86": int8_arithmetic(), "userland": f"Debian 12 ({rootfs.SUITE}) arm64, runtime venv: "
            f"`./runtime[{','.join(rootfs.EXTRAS)}]` + {rootfs.TORCH} (aarch64 wheels downloaded and installed offline by the "
            "host's pip with the board's platform tags and markers)",
            "max_inputs": limit, "results": results,
            "passed": not any(r["mismatch"] for r in results),
            "timing_s": {"cold": cold, **timing, "setup": round(setup_s, 1), "total": round(time.monotonic() - started, 1)},
            "note": "emulated timings (qemu-user on x86): not Raspberry Pi timings"}


@cli("stage 'arm64'")
def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.arm64", description=__doc__.splitlines()[0])
    parser.add_argument("--max-inputs", type=int, default=None,
                        help="at most this many gold inputs per artifact (default: each model's board_inputs, "
                             f"at most {CROSS_CHECK_INPUTS})")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--setup-only", action="store_true",
                        help="only build (or reuse) the cached userland and venv; needs no artifact (stages.build "
                             "runs it beside the builds)")
    args = parser.parse_args(argv)
    plan = yaml.safe_load((PROJECT_ROOT / "conf" / "builds.yaml").read_text())
    reason = rootfs.why_not_here()
    if reason:
        console.print(f"[bold yellow]arm64 check not run:[/] {reason}")
        if not args.setup_only:
            write_json(args.out, {"ran": False, "reason": reason, "results": []})
        return 0
    try:
        if args.setup_only:
            timing = setup()[2]
            console.print("arm64 userland ready: " + ", ".join(f"{k} {v}" for k, v in timing.items()))
            return 0
        record = verify(plan, args.max_inputs)
    except (BuildError, RuntimeLoadError) as exc:  # a missing or corrupt artifact is the user's to fix
        return user_error("stage 'arm64'", exc)
    write_json(args.out, record)
    for r in record["results"]:
        if r["host_x86"] is None:  # its own board CPU: evaluate's device-true run, and `runtime verify` here
            console.print(f"  {r['build']:42s} {r['cpu']:11s} n={r['n']:4d} evaluate's device-true run vs the judged "
                          f"execution: max|Δ|={r['max_abs_diff']:.2e} agree={r['top1_agreement']:.3f}; verify "
                          + ("passed" if (r["verify"] or {}).get("passed") else "FAILED"))
            continue
        console.print(f"  {r['build']:42s} {r['cpu']:11s} n={r['n']:4d} vs x86 reference: max|Δ|={r['max_abs_diff']:.2e} "
                      f"agree={r['top1_agreement']:.3f}; vs x86 host kernels: agree={r['host_x86']['top1_agreement']:.3f}"
                      + (f" top-1 x86 {r['top1_x86']:.1f} / arm64 {r['top1_arm64']:.1f}" if r["top1_x86"] is not None else ""))
    failed = [f"{r['build']} on {r['cpu']}: {r['mismatch']}" for r in record["results"] if r["mismatch"]]
    if failed:
        return user_error("stage 'arm64'", BuildError(
            "the emulated board does not reproduce the reference semantics that judged these artifacts:\n  "
            + "\n  ".join(failed), hint=f"see {args.out}; the verdict's arithmetic is not the board's here: "
                                        "inspect the artifact's quantized ops on this CPU"))
    return 0
