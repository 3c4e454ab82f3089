"""compose: write the fully resolved config of a model or a build (model.json, build.json), and beside it
the digest of each config key its stages read (params.json), which DVC tracks.

    python -m stages.compose                      # every model and chain of conf/builds.yaml
    python -m stages.compose --model mobilenet_v2 --chains        # the model's and its chains' (a DVC stage)
    python -m stages.compose --model mobilenet_v2                 # artifacts/_build/<model>/model.json
    python -m stages.compose --model mobilenet_v2 --target rpi4 --quant int8_static
                                                  # artifacts/_build/<model>/<target>/<quant>/build.json

DVC cannot see Hydra's defaults lists or interpolations; tracking keys of these resolved files
instead of conf/*.yaml means every stage reruns exactly when a value it reads changes.
The digests sit in a file of their own: DVC looks each tracked key up by walking every leaf of the file,
and over the full configs that lookup was a second of a no-op `dvc repro` (cProfile: 573 lookups).
One DVC stage per model writes its files in one process: any edit under conf/ reruns them (a few
seconds, where a process per file cost 26 interpreter starts), and a file whose bytes did not change
leaves its stages up to date.
JSON, because DVC parses params files on every `dvc repro` and YAML parsing dominated its no-op time.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from stages.core.budget import check_resolvable
from stages.core.cli import layout_for, load
from stages.core.config import to_plain
from stages.core.datasets import dataset_size
from stages.core.errors import BuildError
from stages.core.fileio import write_json
from stages.core.layout import CONF_DIR
from stages.core.log import user_error, cli
from stages.core.pipeline import STAGE_MODULES, code_digest, dvc_param, load_stage, tracked_params


def digests(plain: dict[str, Any]) -> dict[str, Any]:
    """``digest.<name>``: the sha256 of the value of each config key a stage reads, which is what
    dvc.yaml tracks (stages/core/pipeline.py, ``dvc_param``)."""
    conf = OmegaConf.create(plain)
    found = {}
    for key in tracked_params():
        if key.split(".")[0] not in plain:
            continue  # a model config has no target/rewrite section
        value = OmegaConf.select(conf, key)  # None digests too: DVC fails on a missing param
        data = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        blob = json.dumps(data, sort_keys=True).encode()
        found[dvc_param(key).split(".", 1)[1]] = hashlib.sha256(blob).hexdigest()
    return {"digest": found}


def code_digests() -> dict[str, Any]:
    """Each stage's code digest, which its dvc.yaml entry tracks as a param (stages/core/pipeline.py,
    ``code_param``)."""
    return {"digest": {f"code_{name}": code_digest(load_stage(name)) for name in STAGE_MODULES}}


def compose_files(model: str, target: str | None, quant: str | None, overrides: list[str]) -> None:
    cfg = load([f"model={model}", *([f"target={target}"] if target else []), *([f"quant={quant}"] if quant else []),
                *overrides])
    layout = layout_for(cfg)
    n, distinct = dataset_size(cfg.model.gold)
    check_resolvable(cfg.model, n)  # a gold set too small for its budget is a configuration error, not a PASS
    plain = to_plain(cfg)
    if target is None:
        write_json(layout.model_config, {"model": plain["model"]})
        write_json(layout.model_params, digests({"model": plain["model"]}))
        write_json(layout.code_digests, code_digests())
    else:
        write_json(layout.build_config, plain)
        write_json(layout.build_params, digests(plain))


def compose_all(plan_path: Path, only: str | None = None) -> int:
    """Every model's and chain's config of the plan (of model ``only`` alone if given); the number of
    files written."""
    import yaml

    plan = yaml.safe_load(plan_path.read_text())
    models = [m for m in plan["models"] if only in (None, m)]
    chains = [c for c in plan["chains"].values() if only in (None, c["model"])]
    if only is not None and not models:
        raise BuildError(f"model {only!r} is not in {plan_path.name}'s models ({', '.join(plan['models'])}): "
                         "add it there, or compose it without --chains")
    for model in models:
        compose_files(model, None, None, [])
    for item in chains:
        compose_files(item["model"], item["target"], item["quant"], [])
    return len(models) + len(chains)


@cli("compose")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.compose", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="omit for every model and chain of conf/builds.yaml")
    parser.add_argument("--target", help="omit for the target-independent model config")
    parser.add_argument("--quant", help="the quant scheme; default: the target's")
    parser.add_argument("--chains", action="store_true",
                        help="with --model: also every chain of the model in conf/builds.yaml")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args(argv)
    if args.model is None and (args.target or args.quant or args.overrides or args.chains):
        parser.error("--target, --quant, --chains and overrides need --model")
    if args.chains and (args.target or args.quant or args.overrides):
        parser.error("--chains composes the plan's chains as they are: no --target, --quant or overrides")
    try:
        if args.model is None or args.chains:
            compose_all(CONF_DIR / "builds.yaml", args.model)
        else:
            compose_files(args.model, args.target, args.quant, args.overrides)
    except BuildError as exc:
        return user_error("compose", exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
