"""train: the float model's weights. Trains from scratch when the model has a `train` recipe, applies
`surgery` (module rewrites) and fine-tunes, or takes the pretrained file as is.

Accuracy on the model's validation split (never its gold set) is recorded after training, right after surgery (BatchNorm
statistics re-estimated, no gradient step) and after fine-tuning.
"""
from __future__ import annotations

import time

from stages.core.cli import hydra_entry
from stages.core.config import Config
from stages.core.datasets import labelled_tensors, preprocess_for
from stages.core.fileio import atomic_path, write_json
from stages.core.layout import Layout
from stages.core.log import console
from stages.core.pipeline import Stage


def train(cfg: Config, layout: Layout) -> dict:
    import torch

    from stages.core.models import apply_surgery, build_module
    from stages.core.training import accuracy, fit, recalibrate_batchnorm

    model = cfg.model
    start = time.perf_counter()
    torch.manual_seed(model.train.recipe.seed if model.train else 0)  # the random init of a from-scratch model
    module = build_module(model)
    report: dict = {"model": model.name, "weights": model.weights.source, "epochs": [], "accuracy": {},
                    "parameters": sum(p.numel() for p in module.parameters())}
    if model.train or model.surgery:
        pre = preprocess_for(model.input)
        test = labelled_tensors(model.validation, pre)  # never the gold set: only evaluate reads it
        data = model.train.data if model.train else model.surgery.data  # type: ignore[union-attr]
        train_set = labelled_tensors(data, pre)  # type: ignore[arg-type]
    if model.train:
        report["epochs"] += fit(module, train_set, test, model.train.recipe, "train")
        report["accuracy"]["trained"] = report["epochs"][-1]["test_accuracy"]
    if model.surgery:
        report["accuracy"]["before_surgery"] = report["accuracy"].pop("trained", None) or accuracy(module, *test)
        report["surgery"] = apply_surgery(module, model)
        recalibrate_batchnorm(module, train_set[0])
        report["accuracy"]["after_surgery"] = accuracy(module, *test)
        console.print(f"after surgery ({', '.join(report['surgery'])}): {report['accuracy']['after_surgery']:.2f}%")
        report["epochs"] += fit(module, train_set, test, model.surgery.finetune, "finetune")
        report["accuracy"]["after_finetune"] = report["epochs"][-1]["test_accuracy"]
    if report["accuracy"]:
        report["accuracy"]["dataset"] = model.validation.name
    with atomic_path(layout.weights) as tmp:
        torch.save(module.state_dict(), tmp)
    report["seconds"] = round(time.perf_counter() - start, 1)
    write_json(layout.train_report, report)
    return report


STAGE = Stage(
    name="train", scope="model",
    params=("model.module", "model.weights", "model.train", "model.surgery", "model.input", "model.validation"),
    needs=(),
    deps=lambda L: [],
    outs=lambda L: [L.weights, L.train_report],
    run=train,
    doc="float weights: train, surgery + fine-tune, or the pretrained file",
    code=("stages/rewrites/modules.py", "stages/zoo"),
)

if __name__ == "__main__":
    hydra_entry(STAGE)()
