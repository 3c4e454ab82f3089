"""Build one PyTorch INT8 TorchScript artifact in a fresh interpreter.

    python stages/formats/workers/torchscript_worker.py job.json result.json

Job keys (written by stages/formats/torchscript.py): model (the model config as plain data),
weights, calibration (.npy), num_samples, per_channel, engine, output (.pt path). result.json gets
{ok: true, torch: {...}} or {ok: false, error, hint}. A fresh process because TorchScript names
classes from a process-global counter (___torch_mangle_N): here it depends only on the model.
"""
from __future__ import annotations

import json
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

# torch.ao.quantization and torch.jit print deprecation notices on every call; the build log is
# for the user, and what replaces them (torchao's PT2E) is not installed here.
for pattern in (r".*torch\.ao\.quantization is deprecated", r".*`torch\.jit\.", r".*reduce_range will be deprecated",
                r".*quantized tensor creation functions"):
    warnings.filterwarnings("ignore", message=pattern)


def model_config(data: dict[str, Any]) -> Any:
    """The typed ModelConfig back from plain data (float_module and surgery need enums, not strings)."""
    from omegaconf import OmegaConf

    from stages.core.config import ModelConfig

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), data))


def run(job: dict[str, Any]) -> dict[str, Any]:
    from stages.core.models import float_module
    from stages.formats.torchscript import Recipe, build_here, calibration_inputs

    model = model_config(job["model"])
    module = float_module(model, Path(job["weights"]))
    calibration = calibration_inputs(Path(job["calibration"]), job["num_samples"], list(model.input.shape))
    return build_here(module, calibration, job["engine"], Path(job["output"]), Recipe(**job["recipe"]))


def main(job_path: str, result_path: str) -> int:
    from stages.core.errors import BuildError

    job = json.loads(Path(job_path).read_text())
    try:
        result = {"ok": True, "torch": run(job)}
    except BuildError as exc:
        result = {"ok": False, "error": str(exc).split("\n  fix: ")[0], "hint": exc.hint}
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises BuildError
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "hint": None}
    Path(result_path).write_text(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
