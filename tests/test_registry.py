import pytest

from stages.core.errors import BuildError, InternalError
from stages.core.registry import Registry


def test_miss_lists_options_and_key():
    reg: Registry[int] = Registry("widget", "target.widget")
    reg.register("a")(1)
    reg.register("b")(2)
    with pytest.raises(BuildError) as exc:
        reg.get("c")
    assert "target.widget" in str(exc.value) and "a, b" in str(exc.value)


def test_duplicate_is_a_bug():
    reg: Registry[int] = Registry("widget", "k")
    reg.register("a")(1)
    with pytest.raises(InternalError):
        reg.register("a")(2)


def test_real_registries_are_populated():
    from stages.formats import FORMATS
    from stages.core.datasets import SOURCES
    from stages.core.models import WEIGHT_SOURCES
    from stages.quantizers import SCHEMES
    from stages.rewrites import REWRITES

    assert "onnx" in FORMATS and {"none", "vendor", "ort_static", "ort_dynamic", "fp16", "pytorch_quantization"} <= set(SCHEMES)
    assert "fold_batchnorm" in REWRITES and "package" in WEIGHT_SOURCES and "opencv-doc" in SOURCES
