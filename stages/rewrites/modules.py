"""Module rewrites: swap PyTorch modules for ones a board runs. They change the function, so the
train stage fine-tunes after them (model.surgery); each returns the names of the modules it swapped.
"""
from __future__ import annotations

from typing import Any, Callable

from stages.core.errors import BuildError
from stages.core.registry import Registry

ModuleRewrite = Callable[[Any, dict[str, Any]], list[str]]
MODULE_REWRITES: Registry[ModuleRewrite] = Registry("module rewrite", "model.surgery.rewrites.<name>.fn")


def swap_modules(root: Any, match: Callable[[Any], bool], make: Callable[[Any], Any]) -> list[str]:
    """Replace every submodule ``match`` accepts with ``make(old)``; return the swapped names."""
    names = [name for name, module in root.named_modules() if name and match(module)]
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, attr, make(getattr(parent, attr)))
    return names


def _no_params(name: str, params: dict[str, Any]) -> None:
    if params:
        raise BuildError(f"module rewrite {name} takes no params, got {sorted(params)}",
                         hint=f"remove `params` from conf/rewrite/{name}.yaml")


@MODULE_REWRITES.register("gelu_to_relu6")
def gelu_to_relu6(root: Any, params: dict[str, Any]) -> list[str]:
    """GELU (exported as Erf arithmetic before opset 20) -> ReLU6 (a Clip every NPU runs)."""
    from torch import nn

    _no_params("gelu_to_relu6", params)
    return swap_modules(root, lambda m: isinstance(m, nn.GELU), lambda m: nn.ReLU6(inplace=False))


@MODULE_REWRITES.register("instancenorm_to_batchnorm")
def instancenorm_to_batchnorm(root: Any, params: dict[str, Any]) -> list[str]:
    """InstanceNorm2d -> BatchNorm2d with the same affine weights; the train stage re-estimates the
    running statistics on training data, then fine-tunes (BatchNorm then folds into the conv)."""
    import torch
    from torch import nn

    _no_params("instancenorm_to_batchnorm", params)

    def make(old: Any) -> Any:
        new = nn.BatchNorm2d(old.num_features, eps=old.eps)
        if old.affine:
            with torch.no_grad():
                new.weight.copy_(old.weight)
                new.bias.copy_(old.bias)
        return new

    return swap_modules(root, lambda m: isinstance(m, nn.InstanceNorm2d), make)


@MODULE_REWRITES.register("bilinear_to_nearest")
def bilinear_to_nearest(root: Any, params: dict[str, Any]) -> list[str]:
    """nn.Upsample(mode=bilinear) -> nearest (the GhostNetV2 seed's Pi workaround)."""
    from torch import nn

    _no_params("bilinear_to_nearest", params)
    return swap_modules(root, lambda m: isinstance(m, nn.Upsample) and m.mode == "bilinear",
                        lambda m: nn.Upsample(size=m.size, scale_factor=m.scale_factor, mode="nearest"))
