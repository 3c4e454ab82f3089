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
