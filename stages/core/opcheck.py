"""The operator check: before conversion, every node the target's accelerator would run is
checked against ``target.operators``. A miss fails the build, names each offending node and the
attribute at fault, and points at the rewrite in conf/rewrite/ that removes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

from .config import OperatorsConfig, OpPattern, RewriteConfig, RewriteKind
from .errors import BuildError
from .layout import CONF_DIR

# Data, not work: every backend folds these.
ALWAYS_ALLOWED = ("Constant",)


@dataclass(frozen=True)
class Offence:
    node: str
    op: str
    attribute: Optional[str]  # "mode=linear" when an attribute value is at fault; None: the op itself

    def describe(self) -> str:
        return f"{self.node} ({self.op}{f', {self.attribute}' if self.attribute else ''})"


def attribute_values(node: Any) -> dict[str, Any]:
    from onnx import helper

    values = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        values[attr.name] = value.decode() if isinstance(value, bytes) else value
    return values


def default_attribute(op: str, name: str) -> Any:
    """ONNX's default for an attribute a node leaves unset (so `mode` of a bare Resize is 'nearest')."""
    from onnx import defs

    try:
        attr = defs.get_schema(op).attributes[name]
    except Exception:
        return None
    if not attr.default_value.name:
        return None
    from onnx import helper

    value = helper.get_attribute_value(attr.default_value)
    return value.decode() if isinstance(value, bytes) else value


def find_offences(nodes: Iterable[Any], operators: OperatorsConfig) -> list[Offence]:
    allowed = {*operators.allowed, *ALWAYS_ALLOWED}
    found = []
    for node in nodes:
        if node.op_type not in allowed:
            found.append(Offence(node.name, node.op_type, None))
            continue
        values = attribute_values(node)
        for name, accepted in operators.attributes.get(node.op_type, {}).items():
            value = values.get(name, default_attribute(node.op_type, name))
            if value not in list(accepted):
                found.append(Offence(node.name, node.op_type, f"{name}={value}"))
    return found


def known_rewrites() -> dict[str, RewriteConfig]:
    """Every rewrite in conf/rewrite/, validated, by name."""
    from omegaconf import OmegaConf

    rewrites = {}
    for path in sorted((CONF_DIR / "rewrite").glob("*.yaml")):
        merged = OmegaConf.merge(OmegaConf.structured(RewriteConfig), OmegaConf.load(path))
        rewrites[path.stem] = OmegaConf.to_object(merged)  # type: ignore[assignment]
    return rewrites


def _matches(pattern: OpPattern, offence: Offence, values: dict[str, Any]) -> bool:
    if pattern.op != offence.op:
        return False
    return all(values.get(k, default_attribute(offence.op, k)) == v for k, v in pattern.attrs.items())


def remedies(offence: Offence, node: Any, rewrites: dict[str, RewriteConfig]) -> list[str]:
    """The rewrites that remove this node, phrased as what to do."""
    values = attribute_values(node)
    out = []
    for name, rewrite in rewrites.items():
        if any(_matches(p, offence, values) for p in rewrite.removes):
            if rewrite.kind == RewriteKind.module:
                out.append(f"{name} (module rewrite + fine-tune: add it to model.surgery.rewrites)")
            else:
                out.append(f"{name} (add it to the target's rewrite list)")
    return out


def check_operators(nodes: list[Any], operators: Optional[OperatorsConfig], target: str, where: str = "") -> None:
    """Raise a BuildError listing every node ``target`` cannot run, with the rewrites that fix each."""
    if operators is None:
        return
    offences = find_offences(nodes, operators)
    if not offences:
        return
    by_name = {n.name: n for n in nodes}
    rewrites = known_rewrites()
    lines = []
    for offence in offences:
        fixes = remedies(offence, by_name[offence.node], rewrites)
        lines.append(f"  - {offence.describe()}: "
                     + (f"removed by {'; or '.join(fixes)}" if fixes else "no rewrite in conf/rewrite/ removes it"))
    raise BuildError(
        f"{len(offences)} node(s){f' in {where}' if where else ''} use operators target {target!r} does not "
        f"accept:\n" + "\n".join(lines),
        hint=f"apply the rewrites named above, or extend target.operators in conf/target/{target}.yaml if the "
             "backend does support them; nothing was written")
