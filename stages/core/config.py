"""Structured-config schemas: every Hydra group is validated against a dataclass.

A typo in a YAML key, a wrong type or an invalid enum value fails here, naming the full key.
Mean/std are in pixel units (0..255), the convention vendor toolchains (RKNN) use as well.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import BuildError, first_line

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


def rule(default: Any = MISSING, *, factory: Any = None, **constraint: Any) -> Any:
    """A field with a value rule, checked by ``check_values`` after the types: ``ge``/``gt``/``le``/``lt``
    (a number, or every number of a list), ``choices``, ``length`` (of a list), ``each_ge``."""
    if factory is not None:
        return field(default_factory=factory, metadata={"rule": constraint})
    return field(default=default, metadata={"rule": constraint})


class Task(str, enum.Enum):
    """What a model's output means, and so how the gold check scores it (stages/core/tasks.py)."""

    classification = "classification"  # class logits against hand labels
    face_classification = "face_classification"  # an MTCNN stage net: [box regression..., p(not face), p(face)]
    head_pose = "head_pose"  # WHENet-style yaw/pitch/roll bins, decoded to degrees (runtime/tasks/headpose.py)
    face_detection = "face_detection"  # a single-shot detector's raw anchors (BlazeFace: runtime/tasks/blazeface.py)


class Layout(str, enum.Enum):
    NCHW = "NCHW"
    NHWC = "NHWC"


class ColorOrder(str, enum.Enum):
    RGB = "RGB"
    BGR = "BGR"
    GRAY = "GRAY"


class CalibMethod(str, enum.Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class QType(str, enum.Enum):
    int8 = "int8"
    uint8 = "uint8"
    int16 = "int16"  # W8A16: 16-bit activations where the backend has the kernels
    uint16 = "uint16"


# ---------------------------------------------------------------- datasets
@dataclass
class ImageItem:
    source: str = MISSING  # a registered image source (stages.core.datasets.SOURCES)
    file: str = MISSING  # path inside that source
    label: Optional[int] = None  # primary class index (gold sets)
    accept: List[int] = field(default_factory=list)  # other indices a careful human counts as correct
    why: str = ""  # what a person saw in the photo that justifies the label
    box: Optional[List[int]] = None  # crop (x0, y0, x1, y1) in pixels: e.g. one face of a photo
    frame: Optional[int] = rule(None, ge=0)  # `file` is a video: this item is its frame (0-based)


@dataclass
class AugmentConfig:
    """Several tensors from one photo or frame: the plain preprocessed image, then ``samples - 1`` views
    of it, deterministic for a given seed (calibration draws, or a fidelity set's crops and scales)."""

    samples: int = rule(1, ge=1)  # tensors drawn per image; 1 = the plain preprocessed image only
    min_crop: float = rule(0.35, gt=0.0, le=1.0)  # smallest crop, as a fraction of the image area
    random_crop: bool = True  # false: every view is the whole image (with flip: plain, mirrored, plain, ...)
    flip: bool = True
    seed: int = 0


@dataclass
class IdxConfig:
    """Images and labels in IDX files (the MNIST family), gzip or plain."""

    source: str = MISSING  # a registered folder (stages.core.datasets.SOURCES)
    images: str = MISSING  # e.g. t10k-images-idx3-ubyte.gz
    labels: Optional[str] = None  # e.g. t10k-labels-idx1-ubyte.gz
    start: int = 0  # first record used
    count: Optional[int] = None  # records used; None: to the end


@dataclass
class LabelRun:
    label: int = MISSING
    count: int = MISSING


@dataclass
class NpyConfig:
    """Images in one .npy array (N x H x W, grey, 0..1 floats or uint8), labelled in consecutive runs."""

    source: str = MISSING  # a registered folder (stages.core.datasets.SOURCES)
    file: str = MISSING  # e.g. lfw_subset.npy
    runs: List[LabelRun] = field(default_factory=list)  # e.g. 100 x label 1, then 100 x label 0
    start: int = 0  # first record used
    count: Optional[int] = None  # records used; None: to the end


@dataclass
class VideoItem:
    """Frames of a real video: every ``every``-th frame from ``start``, at most ``count`` of them."""

    source: str = MISSING  # a registered image source (stages.core.datasets.SOURCES)
    file: str = MISSING  # e.g. vtest.avi
    every: int = rule(1, ge=1)
    start: int = rule(0, ge=0)
    count: Optional[int] = rule(None, ge=1)


class Variant(str, enum.Enum):
    """Deterministic transforms a gold set adds per item, for consistency checks (head pose)."""

    mirror = "mirror"  # left-right flip of the crop
    rotate_cw = "rotate_cw"  # the photo turned clockwise by `variant_degrees` about the crop's centre
    rotate_ccw = "rotate_ccw"
    mirror_rotate_cw = "mirror_rotate_cw"  # mirrored, then turned
    mirror_rotate_ccw = "mirror_rotate_ccw"


@dataclass
class DatasetConfig:
    name: str = MISSING
    description: str = ""
    labels: Optional[str] = None  # class-name list the indices refer to (e.g. imagenet1k)
    # false: a fidelity set, real inputs without labels, judged against float only (no top-1 drop)
    labelled: bool = True
    items: List[ImageItem] = field(default_factory=list)  # photos, one by one ...
    videos: List[VideoItem] = field(default_factory=list)  # ... and/or frames of real videos
    idx: Optional[IdxConfig] = None  # ... and/or a whole IDX file
    npy: Optional[NpyConfig] = None  # ... and/or one .npy array
    variants: List[Variant] = field(default_factory=list)  # each item is also scored under these
    variant_degrees: float = rule(15.0, gt=0.0, lt=180.0)
    # labelled items (and their variants) recast as another set's windows: each crop resized to
    # [width, height] (pixel-area averaging) and/or made grey, as skimage's lfw_subset is (25x25 grey)
    window: Optional[List[int]] = rule(None, length=2, ge=1)
    grey: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)


# ---------------------------------------------------------------- model
@dataclass
class InputSpec:
    name: str = "input"
    shape: List[int] = rule(MISSING, length=4, ge=1)  # in `layout` order, batch first
    layout: Layout = Layout.NCHW
    dtype: str = rule("float32", choices=("float32", "float16", "uint8"))
    color: ColorOrder = ColorOrder.RGB
    mean: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # pixel units (0..255)
    std: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # pixel units (0..255)
    resize: Optional[int] = rule(None, ge=1)  # shorter side before the center crop; None: resize to the input size
    interpolation: str = rule("bilinear", choices=("bilinear", "nearest", "bicubic", "area"))


@dataclass
class OutputSpec:
    name: str = "logits"
    labels: Optional[str] = None  # a registered class-name list; copied into the manifest


@dataclass
class WeightsConfig:
    source: str = MISSING  # a registered weight source: package | torchvision | file | none
    package: Optional[str] = None  # pip distribution that ships the file
    module: Optional[str] = None  # importable module whose folder holds `file`
    file: Optional[str] = None
    torchvision: Optional[str] = None  # e.g. MobileNet_V2_Weights.IMAGENET1K_V1 (needs internet)
    sha256: Optional[str] = None  # checked before loading when set


@dataclass
class ExportConfig:
    opset: int = rule(17, ge=7, le=23)
    # ONNX dims left free, by index, e.g. {2: height, 3: width} for a fully convolutional net that
    # runs on every level of an image pyramid (MTCNN's P-Net); the rest stay as in input.shape.
    dynamic_input: Dict[int, str] = field(default_factory=dict)
    dynamic_output: Dict[int, str] = field(default_factory=dict)
    simplifier: str = rule("onnxsim", choices=("onnxsim", "none"))


# ---------------------------------------------------------------- rewrites (graph: per target; module: model surgery)
class RewriteKind(str, enum.Enum):
    graph = "graph"  # an ONNX graph edit: exact, or within a bound its module states
    module = "module"  # a PyTorch module swap that changes the function: the model is fine-tuned after it


@dataclass
class OpPattern:
    """An ONNX op type, optionally only with some attribute values (e.g. Resize with mode=linear)."""

    op: str = MISSING
    attrs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RewriteConfig:
    """One rewrite: a registered function and its parameters (validated by that function)."""

    fn: str = MISSING
    kind: RewriteKind = RewriteKind.graph
    description: str = ""
    params: Dict[str, Any] = field(default_factory=dict)
    removes: List[OpPattern] = field(default_factory=list)  # what it takes out of a graph (for the operator check)


@dataclass
class RecipeConfig:
    """SGD with momentum, cosine or constant learning rate: enough for the small models trained here."""

    epochs: int = rule(1, ge=0)
    batch_size: int = rule(128, ge=1)
    lr: float = rule(0.05, gt=0.0)
    momentum: float = rule(0.9, ge=0.0, lt=1.0)
    weight_decay: float = rule(5e-4, ge=0.0)
    schedule: str = rule("cosine", choices=("cosine", "constant"))
    flip: bool = False  # random horizontal flips
    seed: int = 0
    threads: int = rule(2, ge=1)  # torch threads; results are reproducible for a given count


@dataclass
class TrainConfig:
    """Train the model (from `weights`, usually `none`: from scratch) in the train stage."""

    data: DatasetConfig = MISSING  # training split (never the validation or gold split); scored on `model.validation`
    recipe: RecipeConfig = field(default_factory=RecipeConfig)


@dataclass
class SurgeryConfig:
    """Module rewrites (conf/rewrite/, kind: module) applied to the trained model, then fine-tuning."""

    rewrites: Dict[str, RewriteConfig] = field(default_factory=dict)
    finetune: RecipeConfig = field(default_factory=RecipeConfig)
    data: Optional[DatasetConfig] = None  # fine-tuning data; default: model.train.data


@dataclass
class ModelConfig:
    name: str = MISSING
    description: str = ""
    task: Task = Task.classification
    task_params: Dict[str, Any] = field(default_factory=dict)  # the task's scoring knobs (e.g. a face threshold)
    module: Dict[str, Any] = MISSING  # {_target_: dotted.builder, **kwargs}
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    input: InputSpec = field(default_factory=InputSpec)
    output: OutputSpec = field(default_factory=OutputSpec)
    export: ExportConfig = field(default_factory=ExportConfig)
    gold: DatasetConfig = MISSING  # the test split: only evaluate reads it
    # the validation split, disjoint from gold: the repair's stopping rule, training's per-epoch score,
    # any threshold a stage chooses
    validation: DatasetConfig = MISSING
    calibration: DatasetConfig = MISSING
    sanity: Optional[DatasetConfig] = None  # a small labelled set, reported beside the verdict, never budgeted
    train: Optional[TrainConfig] = None
    surgery: Optional[SurgeryConfig] = None
    # what the model's users need of any artifact of it: the same on every target (no target may loosen it)
    budget: BudgetConfig = field(default_factory=lambda: BudgetConfig())
    # the emulated board's share of the gold set (evaluate's device-true run, on the target's `cpu`): n inputs
    # evenly spaced, a declared, deterministic subset (all of it when smaller), sized to what qemu runs in a
    # build's time. When it resolves the budget, it alone decides the verdict (stages/core/budget.py, verdict)
    board_inputs: int = rule(100, ge=1)


@dataclass
class BudgetConfig:
    """A model's accuracy budget (stages/core/budget.py applies it). Every bound that is set must hold,
    and the gold set must be large enough to resolve it: its 95 % interval no wider than the bound."""

    metric: Optional[str] = "top1"  # a gold metric of the model's task; None: no drop check (a fidelity set)
    # accuracy points (percent) the artifact may lose against float; negative: it must beat float by that much
    max_drop: float = rule(0.5, ge=-100.0, le=100.0)
    min_agreement: Optional[float] = rule(None, ge=0.0, le=1.0)  # fraction of gold inputs whose decision matches float
    max_error: Optional[float] = rule(None, ge=0.0)  # the task's error against float, in its unit (head pose: MAE, degrees)
    # classifiers on ambiguous inputs: agreement where float is confident (top-1 probability >= confidence)
    min_confident_agreement: Optional[float] = rule(None, ge=0.0, le=1.0)
    confidence: float = rule(0.5, gt=0.0, lt=1.0)
    min_top1_in_top5: Optional[float] = rule(None, ge=0.0, le=1.0)  # float's top-1 inside the artifact's top-5
    min_cosine: Optional[float] = rule(None, ge=-1.0, le=1.0)  # mean cosine of the outputs against float


# ---------------------------------------------------------------- target


@dataclass
class RuntimeConfig:
    providers: List[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    threads: int = rule(4, ge=1, le=1024)  # the board's cores; benchmarks here use min(threads, this machine's cores)


@dataclass
class BenchmarkConfig:
    warmup: int = rule(20, ge=0)
    runs: int = rule(50, ge=1)


@dataclass
class NpuConfig:
    """An NPU that runs part of the graph, with the rest falling back to the CPU (format: onpu)."""

    cpu_from: List[str] = field(default_factory=list)  # the first node of one of these op types starts the CPU head
    execution_provider: str = MISSING  # the ORT execution provider a board registers for the NPU


@dataclass
class RknnConfig:
    """Rockchip RKNN toolkit settings (format: rknn for toolkit2, rknn_v1 for RK1808-era toolkit v1)."""

    platform: str = MISSING  # target_platform, e.g. rk3588
    quantized_dtype: str = "w8a8"  # toolkit2: w8a8; toolkit v1: asymmetric_affine-u8
    quantized_algorithm: str = rule("normal", choices=("normal", "mmse", "kl_divergence"))
    optimization_level: int = rule(3, ge=0, le=3)
    toolkit_python: Optional[str] = None  # toolkit v1 only: python of a venv with rknn-toolkit 1.x


@dataclass
class TensorRTConfig:
    fp16: bool = True
    int8: bool = True
    workspace_mb: int = 2048
    timing_cache: Optional[str] = None  # reused across builds on the same GPU when set


@dataclass
class OperatorsConfig:
    """What the target's accelerator accepts, checked on the graph before conversion."""

    allowed: List[str] = MISSING  # ONNX op types
    attributes: Dict[str, Dict[str, List[Any]]] = field(default_factory=dict)  # op -> attribute -> allowed values


@dataclass
class TargetConfig:
    name: str = MISSING
    board: str = MISSING
    description: str = ""
    arch: str = "aarch64"
    # the board's CPU as qemu names it: evaluate's device-true run and `python -m stages.arm64` run its artifacts
    # there (the CPUs the arm64 userland describes: stages/arm64/rootfs.py, CPUINFO)
    cpu: Optional[str] = rule(None, choices=("cortex-a72", "cortex-a76"))
    format: str = MISSING  # a registered artifact format (stages/formats)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    operators: Optional[OperatorsConfig] = None  # None: anything the format's runtime runs
    npu: Optional[NpuConfig] = None
    rknn: Optional[RknnConfig] = None
    tensorrt: Optional[TensorRTConfig] = None


# ---------------------------------------------------------------- quant
@dataclass
class CalibrationConfig:
    method: CalibMethod = CalibMethod.minmax
    num_samples: int = rule(64, ge=1)  # taken from the front of the calibration set
    percentile: float = rule(99.999, gt=0.0, le=100.0)  # for method=percentile
    # minmax: each range the running average of the per-tensor extremes over the calibration tensors
    # (ORT's CalibMovingAverage), so that one crop's outlier does not widen a range for every input
    moving_average: bool = False


@dataclass
class RepairConfig:
    """What the quantize stage does when a build misses its accuracy budget (repairable schemes)."""

    enabled: bool = True  # keep the most sensitive layers in float until the budget holds
    max_float_nodes: int = rule(8, ge=0)  # give up (and fail the build) beyond this many
    sensitivity_inputs: int = rule(32, ge=1)  # calibration tensors the per-layer sensitivity is measured on


@dataclass
class VendorRung:
    """One setting of a vendor toolkit's own levers (RKNN): its quantization algorithm, and whether
    the ops that compute the outputs run in float16 (hybrid quantization)."""

    algorithm: str = rule("normal", choices=("normal", "mmse", "kl_divergence"))
    float_outputs: bool = False


@dataclass
class QuantConfig:
    name: str = MISSING
    scheme: str = MISSING  # a registered quantizer (stages.quantize.SCHEMES)
    description: str = ""
    per_channel: bool = True
    weight_type: QType = QType.int8
    activation_type: QType = QType.uint8
    symmetric_weights: bool = True
    symmetric_activations: bool = False
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    exclude_nodes: List[str] = field(default_factory=list)  # node names kept in float
    exclude_op_types: List[str] = field(default_factory=list)  # op types kept in float (mixed precision)
    op_types: List[str] = field(default_factory=list)  # ort_dynamic: the op types quantized (default MatMul, Gemm)
    # the ops that compute the graph's outputs write them in float: ort_static drops the QDQ pair on a
    # logit; vendor (RKNN) runs those ops in float16 through the toolkit's hybrid quantization
    float_outputs: bool = False
    tensorrt_qdq: bool = False  # QDQ pairs on weights and per consumer (explicit quantization for TensorRT)
    # torchscript: a ReLU6 right after a Conv(+BN) runs as the conv's fused ReLU, its output range observed
    # after the clamp at 6 (as ONNX Runtime's QDQ folds Clip(0, 6)), not before it
    fold_relu6: bool = False
    # scheme vendor: the toolkit's own quantization algorithm (RKNN: quantized_algorithm); null keeps the target's
    vendor_algorithm: Optional[str] = rule(None, choices=("normal", "mmse", "kl_divergence"))
    # scheme vendor on RKNN: settings tried in order by the quantize stage, each built and run in the
    # toolkit's simulator on the validation split; the first that meets the model's budget there is the
    # one convert builds (stages/quantizers/rknn_levers.py). Empty: vendor_algorithm and float_outputs as set
    vendor_ladder: List[VendorRung] = field(default_factory=list)
    repair: RepairConfig = field(default_factory=RepairConfig)


@dataclass
class Config:
    model: ModelConfig = MISSING
    target: TargetConfig = MISSING
    quant: QuantConfig = MISSING
    rewrite: Dict[str, RewriteConfig] = field(default_factory=dict)
    artifacts: str = "artifacts"  # root of the artifact tree, relative to the project
    upstream: bool = True  # build missing or stale upstream outputs before this stage


def validate(cfg: DictConfig | dict) -> Config:
    """Merge a composed config into the schema and return typed objects, or raise BuildError."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), cfg)
        typed: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise BuildError(
            f"invalid config{f' at key {key!r}' if key else ''}: {first_line(exc)}",
            hint="check the spelling and type of that key against stages/core/config.py",
        ) from None
    check_values(typed)
    for section, name in (("model", typed.model.name), ("target", typed.target.name)):
        if not NAME_PATTERN.match(name) or name.startswith("_"):
            raise BuildError(
                f"{section}.name {name!r} is not a valid artifact folder name",
                hint="use lower-case letters, digits and underscores, starting with a letter",
            )
    if typed.model.surgery and not (typed.model.surgery.data or typed.model.train):
        raise BuildError(f"model.surgery of {typed.model.name!r} has no data to fine-tune on",
                         hint="set model.surgery.data (a training set), or give the model a `train` section")
    if "_target_" not in typed.model.module:
        raise BuildError(
            f"model.module of {typed.model.name!r} has no _target_",
            hint="set model.module._target_ to the dotted path of a function that builds the nn.Module",
        )
    return typed


def _value_problem(value: Any, r: dict[str, Any]) -> str | None:
    if value is None or value is MISSING:
        return None
    if "choices" in r and value not in r["choices"]:
        return f"is {value!r}; expected one of {', '.join(map(str, r['choices']))}"
    if "length" in r and len(value) != r["length"]:
        return f"has {len(value)} value(s) {list(value)}; expected {r['length']}"
    numbers = list(value) if isinstance(value, (list, tuple)) else [value]
    for op, test, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                           ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
        if op in r and isinstance(numbers[0] if numbers else None, (int, float)):
            bad = [v for v in numbers if not test(v, r[op])]
            if bad:
                return f"is {value!r}; every value must be {word} {r[op]}" if len(numbers) > 1 or isinstance(
                    value, (list, tuple)) else f"is {value!r}; must be {word} {r[op]}"
    return None


def _walk(node: Any, key: str) -> None:
    from dataclasses import fields, is_dataclass

    if is_dataclass(node):
        for f in fields(node):
            value = getattr(node, f.name)
            path = f"{key}.{f.name}" if key else f.name
            problem = _value_problem(value, f.metadata.get("rule", {}))
            if problem:
                raise BuildError(f"invalid config at key {path!r}: {problem}",
                                 hint=f"set {path} to an allowed value (its rule is in stages/core/config.py)")
            _walk(value, path)
    elif isinstance(node, dict):
        for k, v in node.items():
            _walk(v, f"{key}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _walk(v, f"{key}[{i}]")


def _check_input(spec: InputSpec, key: str) -> None:
    channels = 1 if spec.color == ColorOrder.GRAY else 3
    for name in ("mean", "std"):
        values = getattr(spec, name)
        if len(values) != channels:
            raise BuildError(f"invalid config at key '{key}.{name}': has {len(values)} value(s) {list(values)}; a "
                             f"{spec.color.value} input has {channels} channel(s), so it needs {channels}",
                             hint=f"give one {name} per channel, in pixel units (0..255)")
    if any(v <= 0 for v in spec.std):
        raise BuildError(f"invalid config at key '{key}.std': {list(spec.std)} has a value <= 0",
                         hint="std divides the pixels: give positive values, in pixel units (0..255)")
    shape_channels = spec.shape[1] if spec.layout == Layout.NCHW else spec.shape[3]
    if shape_channels != channels:
        raise BuildError(f"invalid config at key '{key}.shape': {list(spec.shape)} has {shape_channels} channel(s) "
                         f"({spec.layout.value}) but color {spec.color.value} has {channels}",
                         hint="make the shape's channel dimension match the colour order")


def check_values(cfg: Config) -> None:
    """Values, not just keys and types: ranges, allowed strings and lengths (``rule`` fields), and the
    rules across fields (one mean and std per input channel). Raises BuildError naming the full key."""
    _walk(cfg, "")
    _check_input(cfg.model.input, "model.input")
    calibration = cfg.quant.calibration
    if calibration.moving_average and calibration.method != CalibMethod.minmax:
        raise BuildError(f"invalid config at key 'quant.calibration.moving_average': true with method "
                         f"{calibration.method.value!r}; a running average is of min/max ranges only",
                         hint="set quant.calibration.method=minmax, or moving_average=false")


def to_plain(cfg: Config) -> dict[str, Any]:
    """The resolved config as plain JSON-able data (enums as strings), for manifests."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)  # type: ignore[return-value]
