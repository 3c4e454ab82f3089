"""The runtime is what a board installs: it must not pull in torch, hydra, omegaconf or dvc."""
import subprocess
import sys

from conftest import ROOT

HEAVY = ("torch", "torchvision", "hydra", "omegaconf", "dvc", "onnx", "stages")


def test_runtime_imports_nothing_heavy():
    code = (
        "import sys, runtime, runtime.__main__, runtime.backends.onnxruntime, runtime.tracking, runtime.apps.track\n"
        "import runtime.tasks.face_detection, runtime.tasks.headpose\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"runtime imported: {out.stdout.strip()}"


def test_runtime_sources_never_name_heavy_packages():
    # TorchScript (.pt) is the one backend allowed to import torch.
    allowed_torch = {"torchscript.py"}
    for path in (ROOT / "runtime").rglob("*.py"):
        text = path.read_text()
        for name in ("import torch", "from torch", "import hydra", "from hydra", "import dvc", "omegaconf"):
            if "torch" in name and path.name in allowed_torch:
                continue
            assert name not in text, f"{path} contains {name!r}"
