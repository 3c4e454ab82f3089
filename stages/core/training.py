"""A small, deterministic training loop: SGD with momentum, cosine schedule, accuracy per epoch.

Enough for the models trained in this project (Fashion-MNIST classifiers); a larger model brings
its own trainer and hands the train stage a state_dict through ``model.weights``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .config import RecipeConfig
from .log import console, track


def _channels_last(x: Any) -> Any:
    import torch

    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def accuracy(module: Any, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    """Top-1 accuracy in percent, in eval mode."""
    import torch

    module.eval()
    hits = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = module(_channels_last(torch.from_numpy(x[i:i + batch])))
            hits += int((logits.argmax(1).numpy() == y[i:i + batch]).sum())
    return 100.0 * hits / len(x)


def fit(module: Any, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
        recipe: RecipeConfig, phase: str) -> list[dict[str, Any]]:
    """Train in place; return one record per epoch (loss, train and test accuracy, lr)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    rng = np.random.default_rng(recipe.seed)
    x, y = train
    steps_per_epoch = math.ceil(len(x) / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    module.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(module.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay, nesterov=recipe.momentum > 0)
    if recipe.schedule == "cosine":
        scheduler: Any = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    log = []
    for epoch in range(1, recipe.epochs + 1):
        module.train()
        order = rng.permutation(len(x))
        loss_sum, hits, seen = 0.0, 0, 0
        lr = optimizer.param_groups[0]["lr"]
        for step in track(range(steps_per_epoch), f"{phase} epoch {epoch}/{recipe.epochs}"):
            idx = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            xb = torch.from_numpy(x[idx])
            if recipe.flip:
                flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
                xb[flip] = xb[flip].flip(-1)
            yb = torch.from_numpy(y[idx])
            logits = module(_channels_last(xb))
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(idx)
            hits += int((logits.argmax(1) == yb).sum())
            seen += len(idx)
        record = {"phase": phase, "epoch": epoch, "lr": lr, "loss": loss_sum / seen,
                  "train_accuracy": 100.0 * hits / seen, "test_accuracy": accuracy(module, *test)}
        console.print(f"{phase} epoch {epoch}/{recipe.epochs}: loss {record['loss']:.4f}, "
                      f"train {record['train_accuracy']:.2f}%, test {record['test_accuracy']:.2f}%")
        log.append(record)
    module.eval()
    return log


def recalibrate_batchnorm(module: Any, x: np.ndarray, batches: int = 50, batch_size: int = 256) -> None:
    """Re-estimate BatchNorm running statistics (cumulative average) without touching weights."""
    import torch
    from torch import nn

    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches below
    module.train()
    with torch.no_grad():
        for i in range(min(batches, math.ceil(len(x) / batch_size))):
            module(_channels_last(torch.from_numpy(x[i * batch_size:(i + 1) * batch_size])))
    for m in norms:
        m.momentum = 0.1
    module.eval()
