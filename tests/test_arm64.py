"""The Raspberry Pi artifacts on (emulated) arm64 (stages/arm64): the real check in the built
project where this machine can emulate, and what a machine that cannot is told."""
from __future__ import annotations

import json

import pytest

from stages.arm64 import board, rootfs, verify
from stages.core.cli import load


def test_pi_targets_name_the_cpu_qemu_emulates():
    assert {t: load([f"target={t}"]).target.cpu for t in ("rpi4", "rpi5", "rpi4_torch", "rk3566")} == {
        "rpi4": "cortex-a72", "rpi5": "cortex-a76", "rpi4_torch": "cortex-a72", "rk3566": None}


def test_a_target_cpu_is_one_the_userland_describes():
    from dataclasses import fields

    from stages.core.config import TargetConfig

    rule = next(f for f in fields(TargetConfig) if f.name == "cpu").metadata["rule"]
    assert set(rule["choices"]) == set(rootfs.CPUINFO)
    with pytest.raises(Exception, match="'target.cpu': is 'cortex-a53'; expected one of cortex-a72, cortex-a76"):
        load(["target=rpi4", "target.cpu=cortex-a53"])


def test_the_pi_builds_are_the_ones_whose_target_names_a_cpu():
    plan = {"builds": {"a": {"model": "mobilenet_v2", "target": "rpi4", "quant": "int8_static", "artifact": "model.onnx"},
                       "b": {"model": "mobilenet_v2", "target": "rk3566", "quant": "rknn_int8", "artifact": "model.rknn"}}}
    assert [(b["build"], b["board_cpu"]) for b in verify.pi_builds(plan)] == [("a", "cortex-a72")]


def test_without_root_it_says_why_and_records_no_numbers(monkeypatch, tmp_path):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    reason = rootfs.why_not_here()
    assert reason and "root" in reason
    out = tmp_path / "arm64.json"
    assert verify.main(["--out", str(out)]) == 0
    assert json.loads(out.read_text()) == {"ran": False, "reason": reason, "results": []}


@pytest.mark.pipeline
def test_every_pi_artifact_matches_x86_on_each_emulated_cpu(built):
    record = json.loads((built / "artifacts/arm64.json").read_text())
    if not record["ran"]:
        pytest.skip(f"arm64 not emulated on this machine: {record['reason']}")
    import yaml

    plan = yaml.safe_load((built / "conf/builds.yaml").read_text())
    pi = {b["build"] for b in verify.pi_builds(plan)}
    assert {r["build"] for r in record["results"]} == pi and {"fashion_cnn_npu-rpi4_torch-torch_int8"} <= pi
    assert {(r["build"], r["cpu"]) for r in record["results"]} == {(b, c) for b in pi
                                                                  for c in ("cortex-a72", "cortex-a76")}
    # The board is compared with the x86 reference semantics of its QDQ graph (no fused kernels), not with
    # this host's INT8 kernels: on x86 without VNNI those saturate 16-bit sums, which no Pi does, so
    # agreement with them measures the build host, not the artifact (both are recorded).
    pinned = {dep for dep in rootfs.requirements() if dep.startswith("onnxruntime==")}
    from stages.core.cli import load

    models = {m: load([f"model={m}"]).model for m in {r["model"] for r in record["results"]}}
    assert record["passed"], [r["mismatch"] for r in record["results"] if r["mismatch"]]
    for r in record["results"]:
        assert r["machine"] == "aarch64", r
        model = models[r["model"]]
        metrics = json.loads((built / "artifacts" / r["model"] / r["target"] / r["quant"] / "metrics.json").read_text())
        own = r["cpu"] == metrics["device_true"]["cpu"]
        assert r["board_cpu"] == own, r
        if own:  # its own board CPU: evaluate's device-true run (all of board_inputs), not run twice
            assert r["n"] == metrics["device_true"]["n"] == min(model.board_inputs, metrics["n"]), r
            assert r["host_x86"] is None and "device-true" in r["source"], r
        else:  # the cross-check's declared, deterministic subset: board_inputs evenly spaced, at most CROSS_CHECK_INPUTS
            assert r["n"] == min(model.board_inputs, metrics["n"], verify.CROSS_CHECK_INPUTS) >= verify.MIN_INPUTS, r
            assert 0.0 <= r["host_x86"]["top1_agreement"] <= 1.0, r
        # a labelled set's decisions agree with the reference semantics; a fidelity set's outputs stay within
        # the golden tolerance (its near-ties may flip between CPUs): one rule, the stage's own
        assert verify.board_matches_reference(r, model.gold.labelled) is None and r["mismatch"] is None, r
        # device-true numbers: the board's outputs against float on that subset, each with its n and interval
        device = r["device_true"]
        assert device["n"] == r["n"] and device["quantities"]["agreement"]["n"] == r["n"], device
        assert all(q["ci95"] is None or len(q["ci95"]) == 2 for q in device["quantities"].values()), device
        lo, hi = device["reference_agreement"]["ci95"]
        assert lo <= device["reference_agreement"]["value"] <= hi and device["reference_agreement"]["n"] == r["n"]
        # `runtime verify`, what a Pi user runs, passed on the emulated CPU against the build's golden outputs
        assert r["verify"]["passed"] and r["verify"]["exit_code"] == 0, r["verify"]
        assert r["verify"]["golden"]["n"] >= verify.MIN_INPUTS and r["verify"]["board"]["machine"] == "aarch64"
        # the board runs the backend version the build verified with (onnxruntime and torch alike)
        assert r["verify"]["backend_version"]["same"], r["verify"]["backend_version"]
        assert r["build_code_on_board"] == [], r  # `pip install ./runtime[onnx]`: no stages, hydra, dvc
        if r["artifact"] != "model.pt":  # a .pt runs qnnpack on x86 as on the board: that is its reference
            assert own or "reference semantics" in r["reference_x86"], r
            # the board runs the onnxruntime the build evaluated with
            assert r["backend_version_arm64"] == "onnxruntime " + next(iter(pinned)).split("==")[1], r
        assert r["top1_x86"] is None or abs(r["top1_arm64"] - r["top1_x86"]) <= 1.0, r
    # every emulated run mounted /proc, /sys, /dev and the wheelhouse in a mount namespace of its own: none is
    # left on the host (a killed run used to leave them, and every later run failed on "already mounted")
    assert not [line for line in open("/proc/mounts") if str(rootfs.cache_dir()) in line]
    torch_rows = [r for r in record["results"] if r["artifact"] == "model.pt"]
    assert all(r["backend_arm64"] == "torchscript:qnnpack" for r in torch_rows)  # the Pi 4 tutorial's engine
    assert "not Raspberry Pi timings" in record["note"]


def test_the_board_pins_the_onnxruntime_the_build_evaluates_with():
    import tomllib

    meta = tomllib.loads((rootfs.PROJECT_ROOT / "pyproject.toml").read_text())
    board = tomllib.loads((rootfs.PROJECT_ROOT / "runtime/pyproject.toml").read_text())
    build = [d for d in meta["project"]["optional-dependencies"]["build"] if d.startswith("onnxruntime")]
    host = [d for d in meta["project"]["dependencies"] if d.startswith("onnxruntime")]
    pi = [d for d in board["project"]["optional-dependencies"]["onnx"] if d.startswith("onnxruntime")]
    assert pi == host == build and build[0].startswith("onnxruntime=="), (pi, host, build)


def test_each_emulated_cpu_describes_itself():
    from stages.core.hostinfo import parse_cpuinfo

    a72, a76 = (parse_cpuinfo(rootfs.fake_cpuinfo(cpu))[1] for cpu in ("cortex-a72", "cortex-a76"))
    assert "asimddp" in a76 and "asimddp" not in a72  # the Pi 5's A76 has dot product, the Pi 4's A72 not
    assert "CPU part\t: 0xd0b" in rootfs.fake_cpuinfo("cortex-a76") and "0xd08" in rootfs.fake_cpuinfo("cortex-a72")


def test_host_int8_arithmetic_names_vnni_on_x86():
    import platform

    from stages.core.hostinfo import int8_arithmetic, parse_cpuinfo

    info = int8_arithmetic()
    assert info["machine"] == platform.machine() and "onnxruntime" in info
    if info["machine"] == "x86_64":
        assert isinstance(info["vnni"], bool) and ("saturate" in info["u8s8_note"]) != info["vnni"]
    assert parse_cpuinfo("model name\t: X\nflags\t: avx2 avx512_vnni\n") == ("X", {"avx2", "avx512_vnni"})


def test_the_board_is_installed_from_the_runtime_package_plus_torch_for_debian12_aarch64():
    import tomllib

    meta = tomllib.loads((rootfs.PROJECT_ROOT / "runtime/pyproject.toml").read_text())
    assert rootfs.requirements() == [*meta["build-system"]["requires"], *meta["project"]["dependencies"],
                                     *meta["project"]["optional-dependencies"]["onnx"], rootfs.TORCH]
    assert rootfs.RUNTIME_FILES == ("runtime",)  # the build code (stages/) never goes to the board
    tags = rootfs.platforms()
    assert tags[0] == "manylinux_2_36_aarch64" and {"manylinux_2_28_aarch64", "manylinux2014_aarch64"} <= set(tags)


def test_host_pip_download_evaluates_markers_for_the_board(monkeypatch):
    """pip --platform would evaluate torch's `platform_machine == "x86_64"` CUDA deps on this host."""
    import importlib
    import sys

    from pip._vendor.packaging import markers

    monkeypatch.setattr(markers, "default_environment", markers.default_environment)  # restored afterwards
    monkeypatch.delitem(sys.modules, "stages.arm64.board_pip", raising=False)
    importlib.import_module("stages.arm64.board_pip")
    assert not markers.Marker('platform_system == "Linux" and platform_machine == "x86_64"').evaluate()
    assert markers.Marker('platform_machine == "aarch64" and python_version == "3.11"').evaluate()


def test_the_second_stage_reads_only_the_downloaded_packages_and_the_index_comes_back(tmp_path):
    (tmp_path / "debootstrap").mkdir()
    (tmp_path / "debootstrap/debpaths").write_text("a /var/cache/apt/archives/a.deb\nc /var/cache/apt/archives/c.deb\n")
    lists = tmp_path / "var/lib/apt/lists"
    lists.mkdir(parents=True)
    index = lists / "mirror_dists_bookworm_main_binary-arm64_Packages"
    full = b"".join(b"Package: %s\nVersion: 1\n\n" % name for name in (b"a", b"ab", b"b", b"c"))
    index.write_bytes(full)
    with rootfs._only_downloaded_packages(tmp_path):
        assert index.read_bytes() == b"Package: a\nVersion: 1\n\nPackage: c\nVersion: 1\n\n"
    assert index.read_bytes() == full and sorted(p.name for p in lists.iterdir()) == [index.name]


@pytest.mark.pipeline
def test_the_report_takes_board_results_from_the_emulated_pi(built, tmp_path):
    """verify.json files as a board writes them (here: the emulated Cortex-A76's), merged into the report."""
    record = json.loads((built / "artifacts/arm64.json").read_text())
    if not record["ran"]:
        pytest.skip(f"arm64 not emulated on this machine: {record['reason']}")
    boards = tmp_path / "boards"
    for r in record["results"]:
        if r["cpu"] == "cortex-a76":
            (boards / r["build"]).mkdir(parents=True)
            (boards / r["build"] / "verify.json").write_text(json.dumps(r["verify"]))
    from stages.report import main

    report = tmp_path / "report"
    import shutil

    shutil.copytree(built / "artifacts", report, ignore=shutil.ignore_patterns(  # the report reads json only
        "report*", "*.onnx", "*.pt", "*.npy", "*.npz", "*.rknn", "*.onpu", "rknn_accuracy_analysis"))
    assert main(["--artifacts", str(report), "--board-results", str(boards)]) == 0
    md = (report / "report.md").read_text()
    assert "## On real boards" in md and md.count("| aarch64, CPU part: 0xd0b |") == len(list(boards.iterdir()))


def test_the_board_subset_is_declared_deterministic_and_spread_over_the_gold_set():
    assert board.subset(1016, 16) == board.subset(1016, 16)  # the same inputs every build
    picked = board.subset(1016, 16)
    assert len(picked) == 16 and picked[0] == 0 and picked[-1] == 1015  # first to last, not the first 16
    assert all(b - a >= 60 for a, b in zip(picked, picked[1:]))  # MobileNetV2's 8 views of a source stay apart
    assert board.subset(40, 100) == list(range(40))  # a smaller gold set runs whole


@pytest.mark.pipeline
def test_every_pi_builds_verdict_comes_from_its_device_true_run(built):
    """metrics.json of each Pi build holds the device-true run on its board's emulated CPU (n, the budget's
    quantities with intervals, the board's agreement with the judged run), and the verdict is the one
    stages/core/budget.py's rule takes from it: never from this host's fused kernels (build_host)."""
    import yaml

    from stages.core import budget as budget_rule

    reason = rootfs.why_not_here()
    plan = yaml.safe_load((built / "conf/builds.yaml").read_text())
    decided_alone = set()
    for b in verify.pi_builds(plan):
        metrics = json.loads((built / "artifacts" / b["model"] / b["target"] / b["quant"] / "metrics.json").read_text())
        device, model = metrics["device_true"], load([f"model={b['model']}"]).model
        if reason:
            assert device == {"ran": False, "cpu": b["board_cpu"], "reason": reason}
            assert "not checked on the board's CPU here" in metrics["verdict_from"]
            continue
        assert device["ran"] and device["cpu"] == b["board_cpu"], device
        assert device["n"] == min(model.board_inputs, metrics["n"]) and device["of"] == metrics["n"], device
        assert all(q["n"] > 0 for q in device["quantities"].values()), device
        assert device["mismatch"] is None, device  # the board reproduced the judged run
        assert "build_host" in metrics and "int8_arithmetic" in metrics["build_host"]
        again = budget_rule.verdict(model.budget, metrics["budget"]["quantities"], metrics["verdict_from"].split(
            " on the whole gold set")[0], device)
        assert again["passed"] == metrics["passed"] and again["failures"] == metrics["failures"], b
        if device["resolves_budget"]:
            decided_alone.add(b["model"])
            assert metrics["verdict_from"].startswith(f"device-true: the emulated {b['board_cpu']}"), metrics
    if not reason:  # Fashion-MNIST (5,000 of 10,000) and MTCNN (every window) resolve their budgets on the board
        assert {"fashion_cnn_npu", "fashion_ghostnetv2", "mtcnn_pnet"} <= decided_alone, decided_alone
