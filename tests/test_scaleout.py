"""Scale-out (issue #8): sweeps in parallel worker processes (Hydra's joblib launcher), on a cluster
(the submitit launcher: its local executor, and the SLURM config through stand-in sbatch/srun), and a
shared S3 artifact cache (a DVC remote on a moto S3 server on loopback)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from conftest import ROOT, copy_built, project_env, run

ART = Path("artifacts/mobilenet_v2/rpi4/int8_static")
# One real job (a rewrite whose upstream the `built` project has fresh) and one that fails inside
# the stage's own error handling (BuildError: a config value of the wrong type).
SWEEP = ["model=mobilenet_v2", "target=rpi4", "quant=fp32", "target.runtime.threads=1,lots"]
FAILED_JOB = "rewrite model=mobilenet_v2 target=rpi4 quant=fp32 target.runtime.threads=lots"
REWRITTEN = Path("artifacts/_build/mobilenet_v2/rpi4/fp32/rewrite.json")
MULTIRUN = Path("artifacts/_multirun")  # hydra.sweep.dir (conf/config.yaml)


def needs(module: str, pip: str):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None,
                              reason=f"{pip} is not installed (pip install -e '.[build,test]')")


joblib_launcher = needs("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher")
submitit_launcher = needs("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher")


# --- launcher configs: composed by Hydra as a sweep would, no build -------------------------------

def hydra_config(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True).hydra


@joblib_launcher
def test_local_parallel_launcher_config():
    hydra = hydra_config("hydra/launcher=local_parallel", "hydra.launcher.n_jobs=3")
    assert hydra.launcher._target_.endswith("JoblibLauncher")
    assert hydra.launcher.n_jobs == 3 and hydra.launcher.backend == "loky"
    # Worker thread pools sleep instead of spinning: several jobs share the cores.
    assert hydra.job.env_set.OMP_WAIT_POLICY == "PASSIVE"


@submitit_launcher
def test_slurm_launcher_config():
    hydra = hydra_config("hydra/launcher=slurm", "hydra.launcher.partition=cpu")
    launcher = hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "cpu"
    assert launcher.cpus_per_task and launcher.mem_gb and launcher.timeout_min and launcher.array_parallelism
    # Job files in the sweep dir: on the shared project filesystem, ignored by git.
    assert launcher.submitit_folder == f"{hydra.sweep.dir}/.submitit/%j" and hydra.sweep.dir.startswith("artifacts/")
    local = hydra_config("hydra/launcher=local_cluster").launcher
    assert local._target_.endswith("submitit_launcher.LocalLauncher")


def test_a_job_that_crashes_is_reported_with_the_sweep_not_swallowed(monkeypatch, tmp_path):
    """Hydra's sweepers keep a failed job's exception to themselves: a bug in one job (not a
    BuildError) must still reach the sweep's failure summary, traceback printed, sweep going on."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from stages.core import cli
    from stages.core.pipeline import Stage

    def crash(cfg, layout):  # noqa: ANN001, ANN202
        raise ValueError("graph is not in SSA form")

    stage = Stage(name="quantize", scope="build", params=(), needs=(), deps=lambda L: [], outs=lambda L: [], run=crash)
    monkeypatch.setattr(cli, "_in_multirun", lambda: True)
    monkeypatch.setattr(cli, "_overrides", lambda: ["quant=fp16"])
    monkeypatch.setattr(cli, "execute", lambda stage, cfg, layout: stage.run(cfg, layout))
    monkeypatch.setattr(cli, "SWEEP_FAILURES", [])
    monkeypatch.delenv(cli.SWEEP_RECORD_ENV, raising=False)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        raw = compose(config_name="config", overrides=["upstream=false", f"artifacts={tmp_path}"])
    cli.run_stage(stage, raw)  # returns: the other jobs go on
    assert cli.SWEEP_FAILURES == ["quantize quant=fp16: internal error, ValueError: graph is not in SSA form"]


# --- sweeps on a copy of the built project: every upstream stage is fresh ------------------------

@pytest.fixture(scope="module")
def sweep_repo(built, tmp_path_factory) -> Iterator[Path]:
    """A copy of the built project without its DVC cache (the sweeps run stages, not DVC), deleted
    when the module's tests end: copies of the built project are GBs."""
    repo = tmp_path_factory.mktemp("sweeps") / "repo"
    shutil.copytree(built, repo, symlinks=True,
                    ignore=lambda folder, names: ["cache"] if Path(folder).name == ".dvc" else [])
    yield repo
    shutil.rmtree(repo.parent, ignore_errors=True)


def sweep(repo: Path, launcher: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    (repo / REWRITTEN).unlink(missing_ok=True)
    return subprocess.run([sys.executable, "-m", "stages.rewrite", "-m", f"hydra/launcher={launcher}", *SWEEP, *extra],
                          cwd=repo, env=env or project_env(), capture_output=True, text=True, timeout=600)


def assert_summarized(proc: subprocess.CompletedProcess, repo: Path) -> None:
    """The good job built its output; the failed one is listed when the sweep ends, which exits 2."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-4000:]
    assert "1 job(s) of the sweep failed:" in out, out[-4000:]
    assert f"  - {FAILED_JOB}: invalid config at key 'target.runtime.threads'" in out
    assert "Traceback" not in out, out[-4000:]
    assert json.loads((repo / REWRITTEN).read_text())  # written by the job that did not fail
    assert not (repo / MULTIRUN / ".failures").exists(), "the sweep's failure records were not cleaned up"


@pytest.mark.pipeline
@joblib_launcher
def test_parallel_sweep_runs_jobs_in_worker_processes_and_reports_failures(sweep_repo):
    proc = sweep(sweep_repo, "local_parallel", "hydra.launcher.verbose=10")
    out = proc.stdout + proc.stderr
    assert "Using backend LokyBackend with 2 concurrent workers" in out, out[-4000:]
    assert "upstream:" not in out  # the built project's upstream stages are fresh
    assert "rewrite (mobilenet_v2/rpi4/fp32)" in out  # worker output reaches the terminal
    assert_summarized(proc, sweep_repo)


@pytest.mark.pipeline
@submitit_launcher
def test_submitit_local_executor_runs_jobs_as_separate_processes(sweep_repo):
    proc = sweep(sweep_repo, "local_cluster")
    assert_summarized(proc, sweep_repo)
    jobs = sweep_repo / MULTIRUN / ".submitit"  # one folder per job: its pickles and logs
    assert len(list(jobs.rglob("*_result.pkl"))) >= 2
    assert "rewrite (mobilenet_v2/rpi4/fp32)" in "".join(p.read_text() for p in jobs.rglob("*_log.err"))


# Just enough of SLURM for submitit: sbatch starts the array's tasks in the background (submitit
# writes each task's pickle only after sbatch returns) and srun runs its command with --output/--error.
FAKE_SBATCH = """\
import os, re, subprocess, sys, time
script = sys.argv[-1]
text = open(script).read()
flags = dict(re.findall(r"^#SBATCH --([\\w-]+)=(.*)$", text, re.M))
with open(os.environ["FAKE_SLURM_LOG"], "a") as log:
    log.write(text + "\\n")
job = str(int(time.time() * 1000) % 1000000)
first, last = (int(x) for x in flags.get("array", "0-0").split("%")[0].split("-"))
for task in range(first, last + 1):
    env = {**os.environ, "SLURM_JOB_ID": f"{job}{task}", "SLURM_ARRAY_JOB_ID": job, "SLURM_ARRAY_TASK_ID": str(task),
           "SLURM_NTASKS": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0", "SLURM_PROCID": "0",
           "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "localhost"}
    subprocess.Popen(["bash", script], env=env, start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(f"Submitted batch job {job}")
"""
FAKE_SRUN = """\
import os, subprocess, sys, time
args, files = sys.argv[1:], {}
while args and args[0].startswith("--"):
    flag = args.pop(0)
    if flag in ("--output", "--error"):
        files[flag] = args.pop(0)
def path(p):
    for key, var in (("%A", "SLURM_ARRAY_JOB_ID"), ("%a", "SLURM_ARRAY_TASK_ID"), ("%j", "SLURM_JOB_ID")):
        p = p.replace(key, os.environ[var])
    return p.replace("%t", "0")
# The stand-in sbatch starts the tasks at once; submitit creates each task's log folder only once sbatch has
# printed the job ID (on a real cluster a job starts later than that). Wait for it, as a queued job would.
for _ in range(1200):
    if os.path.isdir(os.path.dirname(path(files["--output"]))):
        break
    time.sleep(0.05)
with open(path(files["--output"]), "a") as out, open(path(files.get("--error", files["--output"])), "a") as err:
    sys.exit(subprocess.call(args, stdout=out, stderr=err))
"""
FAKE_SACCT = 'print("JobID|State|NodeList")\n'


@pytest.mark.pipeline
@submitit_launcher
def test_slurm_launcher_config_submits_an_array_job(sweep_repo, tmp_path):
    """conf/hydra/launcher/slurm.yaml end to end, with sbatch/srun/sacct stand-ins on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("sacct", FAKE_SACCT)):
        (bin_dir / name).write_text(f"#!{sys.executable}\n{body}")
        (bin_dir / name).chmod(0o755)
    env = project_env()
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_SLURM_LOG=str(tmp_path / "sbatch.log"))
    proc = sweep(sweep_repo, "slurm", "hydra.launcher.partition=edge", "hydra.launcher.array_parallelism=4",
                 "hydra.launcher.setup=['export EDGEBUILD_ON_NODE=1']", env=env)
    script = (tmp_path / "sbatch.log").read_text()
    for flag in ("--partition=edge", "--array=0-1%2", "--cpus-per-task=4", "--mem=8GB", "--time=60",
                 "--job-name=edgebuild"):
        assert f"#SBATCH {flag}\n" in script, script
    assert "export EDGEBUILD_ON_NODE=1" in script and "-m submitit.core._submit" in script
    assert_summarized(proc, sweep_repo)


# --- shared artifact cache: a DVC remote on S3 (moto server on loopback) -------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def s3_server(tmp_path):
    """A real S3 API (moto) on 127.0.0.1, with the credentials DVC and boto3 read from the environment."""
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if server is None or importlib.util.find_spec("dvc_s3") is None or importlib.util.find_spec("boto3") is None:
        pytest.skip("moto[server] and dvc-s3 are not installed (pip install -e '.[build,test]')")
    port = free_port()
    log = open(tmp_path / "moto.log", "w")
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(f"moto_server exited: {(tmp_path / 'moto.log').read_text()}")
                time.sleep(0.1)
        else:
            raise AssertionError("moto_server did not answer in 30 s")
        creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        import boto3

        boto3.client("s3", endpoint_url=url, **{k.lower(): v for k, v in creds.items() if k != "AWS_DEFAULT_REGION"},
                     region_name="us-east-1").create_bucket(Bucket="edgebuild-cache")
        yield url, creds
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def dvc(repo: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def git(repo: Path, *args: str) -> None:
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], repo)


def uncached_outputs(repo: Path) -> list[str]:
    """Outputs that dvc.yaml keeps out of the DVC cache: `dvc push` never sends them anywhere."""
    import yaml

    found = []
    for name, stage in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        for entry in [*body.get("outs", []), *body.get("metrics", []), *body.get("plots", [])]:
            if isinstance(entry, dict):
                found += [f"{name}: {path}" for path, opts in entry.items() if (opts or {}).get("cache") is False]
    return found


def dvc_outputs(repo: Path) -> dict[str, str]:
    """The sha256 of every file of every output in dvc.lock (a folder output: each file in it)."""
    import yaml

    from stages.core.fileio import sha256_file

    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    files = {}
    for out in (o for stage in lock.values() for o in stage.get("outs", [])):
        path = repo / out["path"]
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                files[file.relative_to(repo).as_posix()] = sha256_file(file)
    return files


@pytest.mark.pipeline
def test_s3_remote_push_then_fresh_clone_pulls_and_rebuilds_nothing(s3_server, built, tmp_path):
    """The shared cache: the machine that built pushes; a fresh clone pulls and is up to date."""
    uncached = uncached_outputs(built)
    assert not uncached, ("outputs marked `cache: false` in dvc.yaml never reach the remote, so a fresh clone "
                          "reruns their stages (evaluate, for metrics.json): drop `cache: false` in "
                          f"stages/dvcgen.py: {uncached[:4]}")
    url, creds = s3_server
    env = {**project_env(), **creds}
    team = tmp_path / "team"  # the machine that built: the built project, with its DVC cache
    copy_built(built, team)
    dvc(team, "remote", "add", "-d", "team", "s3://edgebuild-cache/edgebuild", env=env)
    dvc(team, "remote", "modify", "team", "endpointurl", url, env=env)
    git(team, "add", "dvc.lock", ".dvc/config")
    git(team, "commit", "-qm", "build")
    dvc(team, "push", env=env)

    clone = tmp_path / "clone"  # a teammate, or CI: a fresh clone with an empty DVC cache
    run(["git", "clone", "-q", str(team), str(clone)], tmp_path)
    assert not (clone / ART / "model.onnx").exists()
    dvc(clone, "pull", env=env)
    built_files = dvc_outputs(team)
    assert f"{ART.as_posix()}/model.onnx" in built_files and dvc_outputs(clone) == built_files
    assert json.loads(dvc(clone, "status", "--json", env=env).stdout or "{}") == {}
    out = dvc(clone, "repro", env=env)
    assert "Running stage" not in out.stdout + out.stderr, out.stdout[-4000:]
    assert "Data and pipelines are up to date." in out.stdout
