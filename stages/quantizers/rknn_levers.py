"""The RKNN toolkit's own levers, chosen by the repair's stopping rule on the validation split.

A vendor scheme with a ``vendor_ladder`` (conf/quant/rknn_int8_levers.yaml) lists settings of the
toolkit, cheapest first: its quantization algorithm (normal, mmse, kl_divergence) and whether the ops
that compute the outputs run in float16 (hybrid quantization). The quantize stage builds each in the
toolkit, runs it in the toolkit's simulator on the model's validation split, and judges it against
the float graph with the budget rule the repair uses (stages/quantizers/repair.py, ``Judge``). The
first setting that meets the budget there is the one convert builds (stages/formats/rknn.py,
``levers``); quantize.json records every setting tried and its numbers. The gold set is never read.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from stages.core.errors import BuildError
from stages.core.log import console


def label(rung) -> str:  # noqa: ANN001
    return f"{rung['algorithm']}{' + float16 outputs' if rung['float_outputs'] else ''}"


def choose(cfg, layout, graph: Path) -> dict:  # noqa: ANN001
    """Try the ladder's settings in order on ``graph`` (the float ONNX the toolkit quantizes)."""
    from runtime.backends.rknn import data_format
    from runtime.manifest import TensorSpec
    from stages.formats import rknn

    from .repair import validation_judge

    judge = validation_judge(cfg, layout)
    spec = rknn.device_inputs(cfg)[0]
    pixels = rknn.pixels(cfg, np.concatenate(judge.inputs)).transpose(0, 2, 3, 1).astype(np.uint8)
    fmt = data_format(TensorSpec(spec["name"], tuple(spec["shape"]), spec["dtype"], spec["layout"]))
    calibration = np.load(layout.calibration)
    tried: list[dict] = []
    chosen = None
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        np.save(tmp / "inputs.npy", pixels)
        for i, rung in enumerate(cfg.quant.vendor_ladder):
            prepared = tmp / f"rung{i}"
            prepared.mkdir()
            rknn.write_prepared(cfg, prepared, graph, calibration, rung.algorithm, rung.float_outputs)
            result = rknn.run_worker(cfg, layout, prepared / "model.rknn", prepared=prepared,
                                     simulate={"inputs": str(tmp / "inputs.npy"), "outputs": str(tmp / "out.npy"),
                                               "data_format": fmt})
            outputs = np.load(tmp / "out.npy").reshape(judge.reference.shape)
            verdict = judge.outputs(outputs)
            tried.append({**asdict(rung), "times": result["times"], **verdict})
            console.print(f"  {label(asdict(rung))} on "
                          f"{judge.dataset}: drop {verdict['drop']:.2f}, agreement {verdict['agreement']:.3f}"
                          f"{'' if verdict['passed'] else ' (' + '; '.join(verdict['failures']) + ')'}")
            if verdict["passed"]:
                chosen = asdict(rung)
                break
    report = {"split": judge.dataset, "n": len(judge.inputs), "judged_by": f"rknn-simulator:{cfg.target.rknn.platform}",
              "tried": tried, "chosen": chosen}
    if chosen is None:
        raise BuildError(
            f"{cfg.model.name} on {cfg.target.name}: none of quant.vendor_ladder's {len(tried)} toolkit settings "
            f"meets the budget on the validation split {judge.dataset} (n = {len(judge.inputs)}): "
            + "; ".join(f"{label(t)}: {', '.join(t['failures'])}" for t in tried),
            hint="add a setting to quant.vendor_ladder (another algorithm, float16 outputs), or another scheme; "
                 "the budget is the model's requirement")
    return report
