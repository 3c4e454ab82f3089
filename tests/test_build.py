"""stages.build: model subgraphs side by side under DVC; heavy stages take turns (the byte identity
with a serial build is checked on the real build: test_pipeline's stage-alone test compares every file
of a chain)."""
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from stages.build import model_jobs
from stages.core.pipeline import HEAVY_LOCK_ENV, heavy_slot, is_heavy


def test_jobs_are_the_models_final_stages_costliest_first():
    plan = {"models": ["m", "t"], "builds": {"m-rpi4-q": {"model": "m"}, "t-rpi4-q": {"model": "t"}},
            "prepared": {"m-rk1808-q": {"model": "m"}}}
    assert model_jobs(plan, {"m": 30.0, "t": 130.0}, {"t"}) == [
        ("t", ["evaluate@t-rpi4-q"]), ("m", ["evaluate@m-rpi4-q", "prepare@m-rk1808-q"])]


def test_two_trainings_do_not_start_together():
    """They would take turns anyway (heavy_slot): the costliest untrained model starts beside the first."""
    plan = {"models": ["a", "b", "c", "d"], "builds": {f"{m}-rpi4-q": {"model": m} for m in "abcd"}}
    cost = {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}
    assert [m for m, _ in model_jobs(plan, cost, {"a", "b"}, jobs=2)] == ["a", "c", "b", "d"]
    assert [m for m, _ in model_jobs(plan, cost, {"a", "b"}, jobs=1)] == ["a", "b", "c", "d"]
    assert [m for m, _ in model_jobs(plan, cost, set(), jobs=2)] == ["a", "b", "c", "d"]


def test_the_cost_estimate_weighs_training_builds_and_the_emulated_board_run():
    from stages.build import CHAIN_S, TRAIN_S, model_cost

    def model(shape, board_inputs, train=None):
        return SimpleNamespace(input=SimpleNamespace(shape=shape), board_inputs=board_inputs, train=train)

    pi, npu = SimpleNamespace(cpu="cortex-a72"), SimpleNamespace(cpu=None)
    tiny = model([1, 1, 1, 1], 100)
    assert model_cost(tiny, [None, None], 100) == pytest.approx(2 * CHAIN_S, abs=0.1)  # prepared only: chains
    assert model_cost(model([1, 1, 1, 1], 100, "recipe"), [], 100) == pytest.approx(TRAIN_S, abs=0.1)
    assert model_cost(tiny, [pi], 100) > model_cost(tiny, [npu], 100)  # the emulated board run
    windows = model_cost(model([1, 3, 128, 128], 1200), [pi], 1200)  # BlazeFace's 1,200 windows: minutes
    digits = model_cost(model([1, 1, 28, 28], 5000), [pi], 10000)
    assert windows > digits > CHAIN_S and 150 < windows - CHAIN_S < 450  # measured: 270-300 s of stages past its chain
    # a 224x224 model with 16 board inputs (WHENet) outranks a 24x24 one with 1,200 (MTCNN's R-Net): per input,
    # emulation and the layer divergence grow with the input's size
    assert model_cost(model([1, 3, 224, 224], 16), [pi], 184) > model_cost(model([1, 3, 24, 24], 1200), [pi], 1200)


def cfg(train=None, scheme="ort_static"):
    return SimpleNamespace(model=SimpleNamespace(train=train), quant=SimpleNamespace(scheme=scheme))


def test_training_and_pytorch_calibration_are_heavy():
    train, quantize = SimpleNamespace(name="train"), SimpleNamespace(name="quantize")
    assert is_heavy(train, cfg(train="recipe")) and not is_heavy(train, cfg())
    assert is_heavy(quantize, cfg(scheme="pytorch_quantization")) and not is_heavy(quantize, cfg())


def test_heavy_stages_take_turns_across_threads(tmp_path, monkeypatch):
    monkeypatch.setenv(HEAVY_LOCK_ENV, str(tmp_path / "heavy.lock"))
    inside, most = [0], [0]
    lock = threading.Lock()

    def heavy() -> None:
        with heavy_slot(SimpleNamespace(name="train"), cfg(train="recipe")):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.1)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=heavy) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1


def test_a_timing_under_contention_is_marked_unreliable_and_says_why():
    """bench.paired_timing records the other processes' share of the CPU while it timed: a busy
    neighbour (a process spinning on every core) makes the figure unreliable, with the reason."""
    import os

    from stages.core import bench

    if bench._machine_busy_s() is None:
        pytest.skip("no /proc/stat here: the contention check needs Linux")
    spin = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 20: pass\n"
    hogs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.5)  # the neighbours are spinning before the timing starts
        busy = bench.paired_timing({"sum": lambda: sum(range(50000))}, warmup=2, runs=200)
        with bench.MachineShare() as share:  # the same rule for any timed block (the faces stage's fps)
            sum(range(2_000_000))
    finally:
        for hog in hogs:
            hog.kill()
    assert busy["reliable"] is False and busy["other_cpu_share"] > bench.MAX_OTHER_CPU
    assert any("other processes used" in why for why in busy["unreliable_because"])
    assert busy["ms"]["sum"] > 0 and set(busy["spread"]) == {"sum"}
    assert share.other > bench.MAX_OTHER_CPU and "other processes used" in share.why[0]
