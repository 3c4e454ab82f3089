"""stages.build: model subgraphs side by side under DVC, never two trainings at once (the byte identity
with a serial build is checked on the real build: test_pipeline's stage-alone test compares every file
of a chain)."""
import time

from stages.build import model_jobs, run_queue


def test_two_heavy_jobs_never_run_at_once_and_light_ones_fill_in():
    log = []

    def run(name, cmd):
        log.append(("start", name))
        time.sleep(0.15 if name.startswith("train") else 0.03)
        log.append(("end", name))
        return name != "light-broken"

    jobs = [("train-a", [], True), ("train-b", [], True), ("light-1", [], False), ("light-broken", [], False)]
    assert sorted(run_queue(jobs, 2, run)) == [False, True, True, True]
    running = set()
    for event, name in log:
        if event == "start":
            running.add(name)
            assert not {"train-a", "train-b"} <= running, log
        else:
            running.discard(name)
    assert log.index(("start", "light-1")) < log.index(("end", "train-a"))  # the other core was used


def test_jobs_are_the_models_final_stages_costliest_first():
    plan = {"models": ["m", "t"], "builds": {"m-rpi4-q": {"model": "m"}, "t-rpi4-q": {"model": "t"}},
            "prepared": {"m-rk1808-q": {"model": "m"}}}
    assert model_jobs(plan, {"t"}) == [("t", ["evaluate@t-rpi4-q"], True),
                                       ("m", ["evaluate@m-rpi4-q", "prepare@m-rk1808-q"], False)]
