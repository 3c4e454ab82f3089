"""The one Hydra entry point every stage module uses: compose, validate, ensure upstream, run."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from runtime.errors import UserError

from .config import Config, validate
from .errors import BuildError
from .layout import CONF_DIR, Layout
from .log import console, internal_error, user_error
from .pipeline import Stage, ensure_upstream, execute


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides, outside of ``hydra.main``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:  # an unknown option or key, a bad override
        # Hydra's own text names the group and lists its options; only its "full stack trace" advice goes
        lines = [line for line in str(exc).strip().splitlines() if "HYDRA_FULL_ERROR" not in line]
        raise BuildError(f"the config does not compose with {' '.join(overrides) or 'no overrides'}: "
                         + "\n".join(lines[:12]),
                         hint="check conf/builds.yaml and the overrides against `python -m stages.list`; a key that "
                              "the YAML does not set takes a leading + (+model.input.dtype=uint8)") from None


def load(overrides: Sequence[str] = ()) -> Config:
    return validate(compose(overrides))


def layout_for(cfg: Config) -> Layout:
    from stages.formats import artifact_name

    return Layout.of(cfg.artifacts, cfg.model.name, cfg.target.name, cfg.quant.name, artifact_name(cfg.target.format))


# Failures of the jobs of a Hydra multirun (-m): reported together when the sweep ends. Jobs may
# run in other processes (hydra/launcher=local_parallel: joblib workers) or on other machines
# (slurm), so each failed job writes one line into the sweep's record folder, which SweepSummary
# creates in the sweep dir (in the project: a shared filesystem on a cluster) and names in the
# environment, which the launchers pass on to their jobs.
SWEEP_FAILURES: list[str] = []
SWEEP_RECORD_ENV = "EDGEBUILD_SWEEP_RECORD"


def _record_failure(line: str) -> None:
    import os
    import uuid

    from .fileio import write_text

    folder = os.environ.get(SWEEP_RECORD_ENV)
    if folder:
        write_text(Path(folder) / f"{uuid.uuid4().hex}.txt", line + "\n")
    else:
        SWEEP_FAILURES.append(line)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_stage(stage: Stage, raw: DictConfig) -> None:
    """Validate the composed config, build stale upstream outputs, run the stage; exit 2 on user error.

    In a multirun sweep a failed job is reported and the sweep goes on; the sweep exits 2 at the end."""
    try:
        cfg = validate(raw)
        layout = layout_for(cfg)
        if cfg.upstream:
            ensure_upstream(stage, cfg, layout)
        else:
            require_inputs(stage, cfg, layout)
        console.rule(f"[bold]{stage.name}[/] ({layout.model}/{layout.target}/{layout.quant})")
        execute(stage, cfg, layout)
    except UserError as exc:  # BuildError, and the runtime's errors when evaluate loads an artifact
        user_error(f"stage {stage.name!r}", exc)
        if _in_multirun():
            _record_failure(f"{stage.name} {' '.join(_overrides())}: {str(exc).splitlines()[0]}")
            return
        sys.exit(2)
    except Exception as exc:  # a bug, not a user error: the traceback matters
        if not _in_multirun():
            sys.exit(internal_error(f"stage {stage.name!r}"))
        # Hydra's sweepers keep a failed job's exception to themselves: print and record it here.
        console.print_exception()
        _record_failure(f"{stage.name} {' '.join(_overrides())}: internal error, "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def require_inputs(stage: Stage, cfg: Config, layout: Layout) -> None:
    """With upstream=false nothing is rebuilt: every input must already exist; name what is missing and
    the command that builds it."""
    missing = [p for p in stage.deps(layout) if not p.exists()]
    if missing:
        where = ", ".join(str(p.relative_to(layout.root.parent)) if p.is_relative_to(layout.root.parent) else str(p)
                          for p in missing)
        selector = f"model={cfg.model.name}" + ("" if stage.scope == "model" else
                                                f" target={cfg.target.name} quant={cfg.quant.name}")
        raise BuildError(f"upstream=false, and the input(s) of {stage.name} are missing: {where}",
                         hint=f"build them first: `python -m stages.{stage.name} {selector}` (upstream=true, the "
                              "default), or `dvc repro`")


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task)


class SweepSummary(Callback):
    """Hydra callback (conf/config.yaml): list a multirun's failed jobs and exit non-zero."""

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        import os
        import tempfile

        parent = Path(str(config.hydra.sweep.dir)).resolve() / ".failures"
        parent.mkdir(parents=True, exist_ok=True)
        os.environ[SWEEP_RECORD_ENV] = tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent)

    def on_multirun_end(self, config: DictConfig, **kwargs: object) -> None:
        import contextlib
        import os
        import shutil

        failures = list(SWEEP_FAILURES)
        folder = os.environ.pop(SWEEP_RECORD_ENV, None)
        if folder:
            failures += [f.read_text().strip() for f in sorted(Path(folder).glob("*.txt"))]
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):  # the last sweep out removes .failures/ too
                Path(folder).parent.rmdir()
        if failures:
            console.print(f"[bold red]{len(failures)} job(s) of the sweep failed:[/]")
            from rich.markup import escape

            for line in failures:  # overrides and messages, printed literally
                console.print(f"  - {escape(line)}")
            sys.exit(2)


def check_yaml_syntax(conf_dir: Path = CONF_DIR) -> None:
    """Parse every config file first: Hydra reports a YAML syntax error as a bare traceback, and a file
    that is not a mapping (a list where a target belongs) as a type error that names no file."""
    import yaml

    for path in sorted(conf_dir.rglob("*.yaml")):
        name = path.relative_to(conf_dir.parent)
        try:
            data = yaml.safe_load(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise BuildError(f"{name} is not UTF-8 text (byte {exc.start})", hint="save it as UTF-8") from None
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            raise BuildError(f"{name} is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}",
                             hint="fix the syntax there (an unclosed bracket or quote, or bad indentation)") from None
        if data is not None and not isinstance(data, dict):
            group = path.parent.relative_to(conf_dir).as_posix()
            what = f"an option of the config group {group!r}" if group != "." else "a config file"
            raise BuildError(f"{name} holds a {type(data).__name__}, but {what} is a mapping of keys to values",
                             hint="write it as `key: value` lines (see the other files beside it)")


def config_dirs(argv: Sequence[str]) -> list[Path]:
    """conf/, and any --config-dir / -cd that a command line adds (Hydra reads those files too)."""
    dirs = [CONF_DIR]
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(Path(argv[i + 1]))
        elif arg.startswith("--config-dir="):
            dirs.append(Path(arg.split("=", 1)[1]))
    return dirs


class StageTask:
    """The Hydra task function of one stage. Launchers that run jobs in other processes (joblib,
    submitit) pickle it; it travels as the stage's name, and the job imports ``stages.<name>``
    there (``python -m stages.<name>`` runs the module as ``__main__``, which does not pickle)."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    def __call__(self, raw: DictConfig) -> None:
        run_stage(self.stage, raw)

    def __reduce__(self) -> tuple:
        return _stage_task, (self.stage.name,)


def _stage_task(name: str) -> StageTask:
    from .pipeline import load_stage

    return StageTask(load_stage(name))


def hydra_entry(stage: Stage) -> Callable[[], None]:
    """``python -m stages.<name> key=value ...``: a Hydra main bound to one stage."""
    import hydra

    main = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(StageTask(stage))

    def entry() -> None:
        try:
            for conf_dir in config_dirs(sys.argv[1:]):
                if not conf_dir.is_dir():
                    raise BuildError(f"--config-dir {conf_dir}: no such folder")
                check_yaml_syntax(conf_dir)
        except BuildError as exc:
            sys.exit(user_error(f"stage {stage.name!r}", exc))
        try:
            main()
        except SystemExit as exc:
            # Hydra reports its own compose errors (an unknown option, with the options that exist; an unknown
            # key) on stderr and exits 1; the stages exit 2 for user errors and 3 for bugs, never 1.
            if exc.code == 1:
                sys.exit(2)
            raise

    return entry
