"""The README's generated tables (stages/readme.py): a missed build shows its own measured verdict."""
from __future__ import annotations

import json

import yaml

from stages import readme


def test_a_missed_build_shows_its_own_metrics_where_it_was_built_and_says_how_to_build_it_where_not(tmp_path):
    (tmp_path / "conf").mkdir()
    missed = {"m-t-q": {"model": "m", "target": "t", "quant": "q", "reason": "tried mmse: 0.88 < 0.97"},
              "m-u-q": {"model": "m", "target": "u", "quant": "q", "reason": "not tried yet: 1 lever"}}
    (tmp_path / "conf/builds.yaml").write_text(yaml.safe_dump({"models": ["m"], "builds": {}, "missed": missed}))
    folder = tmp_path / "artifacts/m/t/q"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({
        "passed": False, "dataset": "imagenet_fidelity", "n": 1016, "verdict_from": "rknn-simulator:t",
        "budget": {"min_confident_agreement": 0.97, "quantities": {
            "confident_agreement": {"value": 0.881, "ci95": [0.818, 0.924], "n": 143}}}}))
    table = readme.missed(tmp_path / "artifacts")
    built, unbuilt = [line for line in table.splitlines() if line.startswith("| m /")]
    assert "FAIL on imagenet_fidelity (n = 1,016), judged by rknn-simulator:t" in built
    assert "confident agreement 0.881 [0.818, 0.924] n=143 (≥ 0.97)" in built and "tried mmse" in built
    assert "not built here (`python -m stages.evaluate model=m target=u quant=q`)" in unbuilt


def test_a_pi_builds_verdict_row_shows_the_emulated_boards_agreement_with_the_verdict_run(tmp_path):
    arm64 = {"results": [{"model": "m", "target": "rpi4", "quant": "q", "cpu": "cortex-a72", "mismatch": None,
                          "device_true": {"reference_agreement": {"value": 0.99, "k": 99, "n": 100,
                                                                  "ci95": [0.946, 0.998]}}},
                         {"model": "m", "target": "rpi4", "quant": "q", "cpu": "cortex-a76", "mismatch": "verify failed",
                          "device_true": {"reference_agreement": {"value": 0.5, "k": 50, "n": 100,
                                                                  "ci95": [0.40, 0.60]}}}]}
    cell = readme.board_check(arm64, "m", "rpi4", "q")
    assert cell == "cortex-a72: 99/100 [0.95, 1.00]; cortex-a76: 50/100 [0.40, 0.60] FAIL: verify failed"
    assert readme.board_check(arm64, "m", "rk3588", "q") == readme.NA and readme.board_check(None, "m", "rpi4", "q") == readme.NA


def test_the_profile_table_lists_the_slowest_stage_runs_and_the_total(tmp_path):
    root = tmp_path / "artifacts"
    assert "No build profile" in readme.profile(root)
    for build, stage, wall in (("m", "train", 300.0), ("m/rpi4/q", "evaluate", 60.0)):
        stamps = root / "_build" / build / ".stamps"
        stamps.mkdir(parents=True)
        (stamps / f"{stage}.profile.json").write_text(json.dumps({
            "stage": stage, "startup_s": 2.0, "work_s": wall - 2.0, "wall_s": wall, "phases_s": {"latency": 4.5}}))
    table = readme.profile(root)
    assert table.startswith("2 stage runs, 6.0 min of stage wall time in all")
    rows = [line for line in table.splitlines() if line.startswith("| train") or line.startswith("| evaluate")]
    assert rows == ["| train m | 300.0 | 2.0 | 298.0 | latency 4.5 |", "| evaluate m/rpi4/q | 60.0 | 2.0 | 58.0 | latency 4.5 |"]
