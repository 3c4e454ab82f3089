"""dvc.yaml is generated from the stage declarations, and conf/builds.yaml names real configs."""
import sys

import yaml

from conftest import ROOT, run
from stages.core.cli import load
from stages.core.pipeline import STAGE_MODULES, load_stage
from stages.formats import artifact_name


def test_dvc_yaml_is_generated_from_the_stage_declarations():
    proc = run([sys.executable, "-m", "stages.dvcgen", "--check"], ROOT, check=False)
    assert proc.returncode == 0, proc.stderr


def test_builds_name_existing_models_and_targets_with_the_right_artifact():
    builds = yaml.safe_load((ROOT / "conf" / "builds.yaml").read_text())
    for key, build in builds["builds"].items():
        assert key == f"{build['model']}-{build['target']}-{build['quant']}"
        assert build["model"] in builds["models"]
        cfg = load([f"model={build['model']}", f"target={build['target']}", f"quant={build['quant']}"])
        assert build["artifact"] == artifact_name(cfg.target.format)
    for group in ("prepared", "missed", "on_request"):
        for key, build in (builds.get(group) or {}).items():
            assert key == f"{build['model']}-{build['target']}-{build['quant']}"
            load([f"model={build['model']}", f"target={build['target']}", f"quant={build['quant']}"])
    for key, build in {**(builds.get("missed") or {}), **(builds.get("on_request") or {})}.items():
        # out of the default build, each with what was measured
        assert key not in builds["builds"] and key not in builds["chains"], key
        assert len(build.get("reason", "")) > 40 and any(c.isdigit() for c in build["reason"]), key


def test_every_stage_reads_only_declared_upstream_outputs():
    names = list(STAGE_MODULES)
    for name in names:
        stage = load_stage(name)
        assert all(names.index(dep) < names.index(name) for dep in stage.needs), name
        assert stage.params, f"{name} declares no params: DVC could not rerun it on a config change"


def test_dvcgen_names_a_bad_build_entry_in_one_message_and_leaves_dvc_yaml_alone(tmp_path):
    from conftest import copy_project

    repo = copy_project(tmp_path / "repo")
    before = (repo / "dvc.yaml").read_bytes()
    plan = repo / "conf" / "builds.yaml"
    plan.write_text(plan.read_text().replace("target: rpi5, quant: int8_static", "target: rpi9, quant: int8_static", 1))
    proc = run([sys.executable, "-m", "stages.dvcgen"], repo, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "rpi9" in out and "Traceback" not in out, out[-3000:]
    assert (repo / "dvc.yaml").read_bytes() == before
