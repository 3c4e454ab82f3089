"""runtime.preprocess must equal torchvision's reference transforms on real photos."""
import numpy as np
import pytest

from runtime.preprocess import Preprocess, load_image
from stages.core.cli import load
from stages.core.datasets import preprocess_for, resolve


@pytest.mark.parametrize("index", [0, 5, 8])
def test_matches_torchvision_transforms(index):
    from torchvision import transforms as T

    cfg = load()
    item = cfg.model.gold.items[index]
    image = load_image(resolve(item))
    ours = preprocess_for(cfg.model.input)(image)
    reference = T.Compose([
        T.Resize(256), T.CenterCrop(224), T.ToTensor(),
        T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])(image).numpy()[None]
    assert ours.shape == (1, 3, 224, 224) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_nhwc_bgr_layout():
    pre = Preprocess(height=4, width=6, layout="NHWC", color="BGR")
    image = np.zeros((8, 12, 3), np.uint8)
    image[..., 0] = 200  # red
    x = pre(image)
    assert x.shape == (1, 4, 6, 3)
    assert x[0, 0, 0].tolist() == [0.0, 0.0, 200.0]
