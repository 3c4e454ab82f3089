"""`python -m stages.compare`: one table over the builds DVC made, numbers exactly as evaluate wrote them."""
from __future__ import annotations

import json
import sys

import pytest
from conftest import run

pytestmark = pytest.mark.pipeline


def test_rows_are_the_builds_metrics(built):
    proc = run([sys.executable, "-m", "stages.compare", "--model", "fashion_cnn_npu", "--json"], built)
    rows = {(r["target"], r["quant"]): r for r in json.loads(proc.stdout)}
    assert {r["model"] for r in rows.values()} == {"fashion_cnn_npu"}
    metrics = json.loads((built / "artifacts/fashion_cnn_npu/rpi4/int8_static/metrics.json").read_text())
    row = rows[("rpi4", "int8_static")]
    assert row["top-1 float → artifact"] == f"{metrics['float']['top1']:.2f} → {metrics['artifact']['top1']:.2f}"
    assert row["speedup"] == f"×{metrics['speedup']:.1f}" and row["budget"].startswith("PASS")
    # A simulator build has no latency and says why, rather than a number.
    assert rows[("rk3566", "rknn_int8")]["latency ms (eager)"].startswith("n/a")


def test_markdown_for_a_closing_note_or_a_pr(built, tmp_path):
    md = tmp_path / "schemes.md"
    run([sys.executable, "-m", "stages.compare", "--target", "rpi4", "--md", str(md)], built)
    lines = md.read_text().splitlines()
    assert lines[0].startswith("| model | target | quant |") and len(lines) >= 2 + 3  # one row per rpi4 build
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_nothing_evaluated_says_what_to_run(tmp_path):
    proc = run([sys.executable, "-m", "stages.compare", "--artifacts", str(tmp_path)], tmp_path.parent, check=False)
    assert proc.returncode == 2 and "run `dvc repro`" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_times_every_artifact_and_eager_in_one_run(built):
    proc = run([sys.executable, "-m", "stages.compare", "--model", "mobilenet_v2", "--target", "rpi4", "--bench",
                "--runs", "3", "--json"], built)
    rows = {r["build"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {"torch_eager_fp32", "rpi4/int8_static"}
    assert rows["torch_eager_fp32"]["speedup_vs_eager"] == 1.0
    assert all(r["ms"] > 0 for r in rows.values())
    # the conditions it was measured under come with it, whatever they were
    assert all(isinstance(r["reliable"], bool) and r["spread"] >= 0 for r in rows.values())
    assert all(r["reliable"] == (not r["unreliable_because"]) for r in rows.values())


def test_bench_needs_one_model(built):
    proc = run([sys.executable, "-m", "stages.compare", "--target", "rpi4", "--bench"], built, check=False)
    assert proc.returncode != 0 and "give --model" in proc.stderr
