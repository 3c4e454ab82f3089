"""Where every file of a build lives. The artifact folder holds exactly the device contract:

    artifacts/<model>/<target>/<quant>/model.<ext>, manifest.json, metrics.json

Intermediates live under artifacts/_build/, per model (target-independent work) and per build
(model, target, quant scheme).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"


@dataclass(frozen=True)
class Layout:
    root: Path
    model: str
    target: str
    quant: str = "_"
    artifact_name: str = "model.onnx"  # model.<ext> of the target's format

    @classmethod
    def of(cls, artifacts: str, model: str, target: str, quant: str, artifact_name: str = "model.onnx") -> "Layout":
        root = Path(artifacts)
        return cls(root if root.is_absolute() else PROJECT_ROOT / root, model, target, quant, artifact_name)

    # -- target-independent intermediates
    @property
    def model_dir(self) -> Path:
        return self.root / "_build" / self.model

    @property
    def model_config(self) -> Path:
        return self.model_dir / "model.json"

    @property
    def model_params(self) -> Path:
        """The digest of each config key the model's stages read (stages/compose.py): what dvc.yaml tracks.
        A file of its own, beside model.json: DVC looks each tracked key up with dpath, which walks every
        leaf of the file, so a small file keeps a no-op `dvc repro` fast."""
        return self.model_dir / "params.json"

    @property
    def code_digests(self) -> Path:
        """The digest of each stage's code (stages/compose.py), apart from the configs: a code edit
        must not change the bytes of model.json, which some stages read as a file."""
        return self.model_dir / "code.json"

    @property
    def weights(self) -> Path:
        """The float model's state_dict, as the train stage left it (trained, or the pretrained file)."""
        return self.model_dir / "weights.pt"

    @property
    def train_report(self) -> Path:
        return self.model_dir / "train.json"

    @property
    def traced(self) -> Path:
        return self.model_dir / "traced.pt"

    @property
    def exported(self) -> Path:
        return self.model_dir / "exported.onnx"

    @property
    def simplified(self) -> Path:
        return self.model_dir / "simplified.onnx"

    @property
    def simplify_report(self) -> Path:
        return self.model_dir / "simplify.json"

    @property
    def calibration(self) -> Path:
        return self.model_dir / "calibration.npy"

    @property
    def reference(self) -> Path:
        """The float model's outputs on the gold (and sanity) set, for every build's evaluate."""
        return self.model_dir / "reference.npz"

    # -- per (model, target, quant) intermediates
    @property
    def build_dir(self) -> Path:
        return self.model_dir / self.target / self.quant

    @property
    def build_config(self) -> Path:
        return self.build_dir / "build.json"

    @property
    def build_params(self) -> Path:
        """As model_params, for the build's stages."""
        return self.build_dir / "params.json"

    @property
    def rewritten(self) -> Path:
        return self.build_dir / "rewritten.onnx"

    @property
    def rewrite_report(self) -> Path:
        return self.build_dir / "rewrite.json"

    @property
    def quantized(self) -> Path:
        return self.build_dir / "quantized.onnx"

    @property
    def quantize_report(self) -> Path:
        return self.build_dir / "quantize.json"

    @property
    def prepared_dir(self) -> Path:
        """Inputs for a vendor toolchain, kept even when the toolchain is missing here."""
        return self.build_dir / "prepared"

    @property
    def prepare_report(self) -> Path:
        return self.build_dir / "prepare.json"

    @property
    def analysis_dir(self) -> Path:
        """Per-layer accuracy reports written by evaluate."""
        return self.build_dir / "analysis"

    # -- the device contract
    @property
    def artifact_dir(self) -> Path:
        return self.root / self.model / self.target / self.quant

    @property
    def artifact(self) -> Path:
        return self.artifact_dir / self.artifact_name

    @property
    def manifest(self) -> Path:
        return self.artifact_dir / "manifest.json"

    @property
    def metrics(self) -> Path:
        return self.artifact_dir / "metrics.json"

    @property
    def golden(self) -> Path:
        """Golden inputs and the outputs the build judged the artifact by: `python -m runtime verify` reads it."""
        return self.artifact_dir / "golden.npz"
