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


def test_a_build_on_request_shows_its_own_verdict_and_why_it_is_not_in_the_default_build(tmp_path):
    (tmp_path / "conf").mkdir()
    on_request = {"m-t-q": {"model": "m", "target": "t", "quant": "q", "reason": "225 s of stage time"}}
    (tmp_path / "conf/builds.yaml").write_text(yaml.safe_dump({"models": ["m"], "builds": {}, "on_request": on_request}))
    folder = tmp_path / "artifacts/m/t/q"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({
        "passed": True, "dataset": "imagenet_fidelity", "n": 1016, "verdict_from": "rknn-simulator:t",
        "budget": {"min_cosine": 0.985, "quantities": {"cosine": {"value": 0.994, "ci95": [0.993, 0.995], "n": 1016}}}}))
    row = [line for line in readme.on_request(tmp_path / "artifacts").splitlines() if line.startswith("| m /")][0]
    assert "PASS on imagenet_fidelity (n = 1,016), judged by rknn-simulator:t" in row and "225 s of stage time" in row


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


def test_the_device_table_sets_float_the_board_the_whole_set_and_the_build_host_side_by_side(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf/builds.yaml").write_text(yaml.safe_dump({"models": ["m"], "builds": {
        "m-rpi4-q": {"model": "m", "target": "rpi4", "quant": "q"}, "m-rk-q": {"model": "m", "target": "rk", "quant": "q"}}}))
    budget = {"metric": "top1", "max_drop": 0.5}
    drop = {"value": 0.1, "ci95": [-0.1, 0.3], "n": 5000}
    for target, device in (("rpi4", {"ran": True, "cpu": "cortex-a72", "backend_version": "onnxruntime 1.31.1", "n": 5000,
                                     "of": 10000, "quantities": {"drop": drop}, "mismatch": None,
                                     "reference_agreement": {"k": 4990, "n": 5000}}), ("rk", None)):
        folder = tmp_path / "artifacts/m" / target / "q"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({
            "passed": True, "n": 10000, "float": {"top1": 91.25}, "verdict_from": "device-true: the emulated cortex-a72",
            "budget": {**budget, "quantities": {"drop": {**drop, "value": 0.2, "n": 10000}}},
            "build_host": {"int8_arithmetic": {"cpu": "AMD EPYC", "vnni": False}, "backend": "onnxruntime:CPU",
                           "budget": {"drop": {**drop, "value": 3.0, "n": 10000}}},
            **({"device_true": device} if device else {})}))
    rows = readme.device_rows(tmp_path / "artifacts")
    assert len(rows) == 1  # only the Pi build has a device-true run
    build, floats, board, whole, host, verdict_from, verdict = rows[0]
    assert build == "m / rpi4 / q" and floats == "top1 91.25 %" and verdict == "PASS"
    assert board.startswith("cortex-a72, onnxruntime 1.31.1, n = 5000 of 10,000: top-1 drop, points 0.10 [-0.10, 0.30] n=5000")
    assert "decisions as judged 4990/5000" in board and whole.startswith("10,000 inputs: top-1 drop, points 0.20")
    assert host.startswith("AMD EPYC (no VNNI), onnxruntime:CPU: top-1 drop, points 3.00") and verdict_from.startswith("device-true")


def test_the_arm64_timing_table_comes_from_the_setup_profile_and_arm64_json(tmp_path):
    from stages.arm64 import verify
    from stages.core.profile import record_run

    root = tmp_path / "artifacts"
    assert readme.arm64_timing(root).startswith("No arm64 set-up or run recorded")
    record_run(root / verify.SETUP_PROFILE.relative_to(verify.PROJECT_ROOT / "artifacts"), "arm64-setup", 140.0,
               {"root filesystem": 97.1, "wheelhouse": 30.6, "venv": 41.6})
    (root / "arm64.json").write_text(json.dumps({"ran": True, "timing_s": {"cold": False, "run_s": 60.5, "total": 70.2}}))
    rows = [line for line in readme.arm64_timing(root).splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:4] == ["| set-up: root filesystem | 97.1 |", "| set-up: wheelhouse | 30.6 |", "| set-up: venv | 41.6 |"]
    assert rows[4].endswith("| 140.0 |") and rows[5].endswith("| 60.5 |")
    assert rows[6] == "| `python -m stages.arm64`, wall (its set-up reused) | 70.2 |"
