"""An arm64 Debian 12 userland under qemu-user, with the runtime installed the way a Pi user
installs it (`pip install ./runtime[onnx]`, the runtime's own package, plus torch for `.pt`),
cached outside the checkout.

Recipe (../shared/FACTS.md): debootstrap --foreign with python3 included (the host resolves
and downloads the Debian packages; no emulated apt), qemu-aarch64-static copied in, second stage
under binfmt. The aarch64 wheels are downloaded on the host, natively, into a wheelhouse, and the
host's pip installs the runtime's package and torch from it into the board's venv, resolving as the
board's Python would (board_pip.py): unpacking wheels does not depend on the CPU, and it gives the
same files as the board's own pip (ensure_venv), in a fifth of the time emulated pip took. Debian
12's qemu 7.2 shows the host's x86 /proc/cpuinfo, on which onnxruntime's cpuinfo library segfaults,
so every run bind-mounts an ARM /proc/cpuinfo over it.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Iterator, Optional

from stages.core.errors import BuildError
from stages.core.layout import PROJECT_ROOT

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# Installed by debootstrap itself (resolved and downloaded on the host): no emulated apt-get. The venv
# is made without pip (the host's pip fills it), so no python3-venv, whose python3-pip-whl pulls in
# ca-certificates: configuring those two took 27 of the second stage's 94 s under emulation.
DEBIAN_PACKAGES = ("python3",)
PYTHON = ("3.11", "3.11.2")  # Debian 12's python3: what the wheelhouse is resolved for
GLIBC = (2, 36)  # Debian 12's: the manylinux tags its pip accepts


def build_pin(package: str) -> str:
    """The build's own pin of ``package`` (pyproject.toml's build extra): the board installs the version
    that the build evaluated every artifact with, so it runs what was verified."""
    meta = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    for dep in meta["project"]["optional-dependencies"]["build"]:
        name, _, version = dep.split(";")[0].partition("==")
        if name.strip() == package and version.strip():
            return f"{package}=={version.strip()}"
    raise BuildError(f"pyproject.toml's build extra pins no {package}==<version>",
                     hint=f"pin {package} there: the emulated board installs the build's version")


TORCH = build_pin("torch")  # the .pt backend, as the build evaluated it (an aarch64 CPU wheel on PyPI)
QEMU = "/usr/bin/qemu-aarch64-static"
VENV = "/opt/edgebuild/venv"
# What the venv is built from (the runtime's own package, runtime/pyproject.toml): a change there
# reinstalls it. The board gets the runtime and nothing of the build (stages/).
RUNTIME_FILES = ("runtime",)
RUNTIME_PROJECT = "runtime/pyproject.toml"
EXTRAS = ("onnx",)  # the backends a Pi uses, from the runtime's extras; torch (TORCH) for `.pt`
# /proc/cpuinfo as each Pi's CPU reports it (qemu 7.2 would show the host's x86 one, on which
# onnxruntime's cpuinfo library crashes): a Pi 4's BCM2711 Cortex-A72 r0p3 (no crypto, no dot product)
# and a Pi 5's BCM2712 Cortex-A76 r4p1 (dot product: asimddp). qemu's cortex-a72/-a76 models report
# the same features through AT_HWCAP, so the two sources a library may read agree.
CPUINFO = {
    "cortex-a72": {"part": "0xd08", "variant": "0x0", "revision": "3",
                   "features": "fp asimd evtstrm crc32 cpuid"},
    "cortex-a76": {"part": "0xd0b", "variant": "0x4", "revision": "1",
                   "features": "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
                               "lrcpc dcpop asimddp"},
}
DEFAULT_CPU = "cortex-a72"


def fake_cpuinfo(cpu: str) -> str:
    c = CPUINFO[cpu]
    return "".join(f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {c['features']}\n"
                   f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: {c['variant']}\n"
                   f"CPU part\t: {c['part']}\nCPU revision\t: {c['revision']}\n\n" for i in range(4))


# Run once in a new venv, on the emulated CPU: the modules the worker imports, compiled to .pyc (and
# proven to import on arm64).
WARM_IMPORTS = ("import numpy, PIL.Image, onnxruntime, torch, runtime, runtime.backends.onnxruntime, "
                "runtime.backends.onpu, runtime.backends.torchscript")
BOARD_MARKERS = {"platform_machine": "aarch64", "platform_system": "Linux", "sys_platform": "linux",
                 "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython",
                 "python_version": PYTHON[0], "python_full_version": PYTHON[1], "implementation_version": PYTHON[1]}


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEBUILD_ARM64_CACHE", Path.home() / ".cache" / "edgebuild" / "arm64"))


def why_not_here() -> Optional[str]:
    """None when this machine can run arm64 binaries (root, qemu-user-static, binfmt); else why not."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot and bind mounts); run `sudo python -m stages.arm64`"
    missing = [tool for tool in (QEMU, "/usr/sbin/debootstrap", "/usr/sbin/update-binfmts") if not Path(tool).exists()]
    if missing:
        return (f"missing {', '.join(missing)}: `apt-get install qemu-user-static binfmt-support debootstrap` "
                "(python3 -m stages.bootstrap installs them)")
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        with contextlib.suppress(subprocess.CalledProcessError, OSError, BuildError):
            if not Path("/proc/sys/fs/binfmt_misc/status").exists():
                _run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"])
            _run(["update-binfmts", "--enable", "qemu-aarch64"])
        if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
            return ("binfmt_misc has no qemu-aarch64 handler and registering one failed (a container without "
                    "privileges?): on the host, `update-binfmts --enable qemu-aarch64`")
    return None


def _run(cmd: list[str], timeout: int = 900, env: Optional[dict] = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise BuildError(f"`{' '.join(cmd[:6])} ...` failed ({proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()[-1500:]}",
                         hint=f"delete {cache_dir()} to rebuild the arm64 root filesystem from scratch")
    return proc.stdout


def _digest(*parts: bytes) -> str:
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def requirements() -> list[str]:
    """What the board's `pip install ./runtime[onnx] torch` needs: the runtime package's build backend,
    dependencies and the extras a Pi uses (runtime/pyproject.toml), and torch for the `.pt` backend."""
    meta = tomllib.loads((PROJECT_ROOT / RUNTIME_PROJECT).read_text())
    extras = [dep for name in EXTRAS for dep in meta["project"]["optional-dependencies"][name]]
    return [*meta["build-system"]["requires"], *meta["project"]["dependencies"], *extras, TORCH]


def platforms() -> list[str]:
    """The wheel platform tags Debian 12's pip accepts on aarch64 (glibc 2.36 down to manylinux2014)."""
    return [f"manylinux_{GLIBC[0]}_{minor}_aarch64" for minor in range(GLIBC[1], 16, -1)] + ["manylinux2014_aarch64"]


def _runtime_digest(wheelhouse: Path) -> str:
    files = [p for name in RUNTIME_FILES for p in sorted((PROJECT_ROOT / name).rglob("*") if (PROJECT_ROOT / name).is_dir()
                                                           else [PROJECT_ROOT / name])
             if p.is_file() and "__pycache__" not in p.parts]
    return _digest(TORCH.encode(), wheelhouse.name.encode(), VENV_RECIPE.encode(),
                   *(f.relative_to(PROJECT_ROOT).as_posix().encode() + f.read_bytes() for f in files))


@contextlib.contextmanager
def setup_lock() -> Iterator[None]:
    """One set-up of the cached userland at a time: evaluate's device-true runs, the arm64 stage and
    `python -m stages.arm64 --setup-only` may race for it."""
    import fcntl

    lock_file = cache_dir() / ".setup.lock"
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_rootfs() -> tuple[Path, bool]:
    """The cached root filesystem (Debian + python3), built once per recipe; and whether it was reused."""
    root = cache_dir() / f"rootfs-{_digest(SUITE.encode(), MIRROR.encode(), ' '.join(DEBIAN_PACKAGES).encode())}"
    if (root / ".complete").exists():
        return root, True
    shutil.rmtree(root, ignore_errors=True)
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    # First stage on the host: resolves, downloads and unpacks the base system and DEBIAN_PACKAGES.
    _run(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
          SUITE, str(partial), MIRROR], timeout=900)
    shutil.copy(QEMU, partial / "usr/bin/qemu-aarch64-static")
    # The second stage runs under emulation: dpkg without an fsync per file, and debootstrap's shell
    # and perl reading an index of only the packages it downloaded instead of the suite's 49 MB one
    # (read several times over). Both are put back once the system is installed.
    unsafe_io = partial / "etc/dpkg/dpkg.cfg.d/edgebuild-unsafe-io"
    unsafe_io.write_text("force-unsafe-io\n")
    with _only_downloaded_packages(partial):
        _run(["chroot", str(partial), "/debootstrap/debootstrap", "--second-stage"], timeout=1200)
    unsafe_io.unlink()
    for deb in (partial / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    partial.rename(root)
    (root / ".complete").write_text("ok\n")
    return root, False


@contextlib.contextmanager
def _only_downloaded_packages(target: Path) -> Iterator[None]:
    """The first stage's Packages index(es) in ``target`` cut to the packages it downloaded (its
    /debootstrap/debpaths), for the block; the full index afterwards."""
    wanted = {line.split()[0] for line in (target / "debootstrap/debpaths").read_text().splitlines() if line.strip()}
    indexes = list((target / "var/lib/apt/lists").glob("*_Packages"))
    for index in indexes:
        full = index.read_bytes()
        index.rename(index.with_name(index.name + ".full"))
        kept = [stanza for stanza in full.split(b"\n\n")
                if stanza.startswith(b"Package: ") and stanza[9:].split(b"\n", 1)[0].decode() in wanted]
        index.write_bytes(b"\n\n".join(kept) + b"\n\n")
    try:
        yield
    finally:
        for index in indexes:
            index.with_name(index.name + ".full").replace(index)


def ensure_wheelhouse() -> tuple[Path, bool]:
    """The aarch64 wheels for `requirements()`, downloaded on the host (natively: its network, its
    pip config), once per requirement set; and whether it was reused."""
    reqs = requirements()
    house = cache_dir() / f"wheels-{_digest(*map(str.encode, reqs), *map(str.encode, platforms()), PYTHON[1].encode())}"
    if (house / ".complete").exists():
        return house, True
    partial = house.with_name(house.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    args = [*_board_target_args(), "--disable-pip-version-check", "-q", "-d", str(partial), *reqs]
    _run([sys.executable, str(Path(__file__).with_name("board_pip.py")), "download", *args], timeout=1800)
    partial.rename(house)
    (house / ".complete").write_text("\n".join(reqs) + "\n")
    return house, False


# How the venv is made; part of its cache key (a change remakes it).
VENV_RECIPE = "venv --without-pip (emulated); host pip install --target site-packages (board markers); emulated warm import"
SITE_PACKAGES = f"{VENV}/lib/python{PYTHON[0]}/site-packages"


def ensure_venv(root: Path, wheelhouse: Path) -> tuple[str, bool]:
    """The runtime's venv inside ``root``: the Pi user's `pip install ./runtime[onnx]`, plus torch for `.pt`,
    from ``wheelhouse`` (offline); and whether it was reused.

    The venv itself is made by the board's Python (emulated, under a second). The install runs on the host:
    its pip with the board's platform tags and marker environment (board_pip.py) unpacks the same wheels
    into the venv's site-packages. Measured against the board's own pip under qemu (same wheelhouse):
    the 17,886 files both installed were byte-identical except pip's RECORD files and the runtime's
    direct_url.json (the paths they name); emulated pip took 82 s plus 15 s for ensurepip, the host's
    21 s. What differs: the venv has no pip (nothing on the board installs again), and the wheels'
    console scripts (torchrun, f2py, ...), written for the host's interpreter, are removed (the board
    runs `python -m`). Then one emulated import of what the worker uses compiles those `.pyc` files
    and proves that the install imports on arm64."""
    stamp = root / "opt/edgebuild/.venv-digest"
    digest = _runtime_digest(wheelhouse)
    if stamp.exists() and stamp.read_text().strip() == digest:
        return VENV, True
    stamp.unlink(missing_ok=True)
    src = root / "opt/edgebuild/src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for name in RUNTIME_FILES:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, src / name)
    shutil.rmtree(root / VENV.lstrip("/"), ignore_errors=True)
    run_isolated(root, ["python3", "-m", "venv", "--without-pip", VENV])
    site = root / SITE_PACKAGES.lstrip("/")
    if not site.is_dir():
        raise BuildError(f"`python3 -m venv` in the arm64 userland made no {SITE_PACKAGES}",
                         hint=f"delete {cache_dir()} to rebuild the arm64 root filesystem from scratch")
    staged = site.with_name("site-packages.partial")
    shutil.rmtree(staged, ignore_errors=True)
    _run([sys.executable, str(Path(__file__).with_name("board_pip.py")), "install", *_board_target_args(),
          "--disable-pip-version-check", "-q", "--no-warn-conflicts", "--no-index", f"--find-links={wheelhouse}",
          "--no-compile", "--target", str(staged), f"{src / 'runtime'}[{','.join(EXTRAS)}]", TORCH], timeout=1800)
    shutil.rmtree(staged / "bin", ignore_errors=True)  # console scripts with the host's interpreter in them
    site.rmdir()  # the fresh venv's empty site-packages
    staged.rename(site)
    run_isolated(root, [f"{VENV}/bin/python", "-c", WARM_IMPORTS], timeout=900)
    stamp.write_text(digest + "\n")
    return VENV, False


def _board_target_args() -> list[str]:
    """pip's options for wheels the board's Python accepts: Debian 12's CPython on aarch64."""
    return ["--only-binary=:all:", "--python-version", PYTHON[0], "--implementation", "cp",
            "--abi", f"cp{PYTHON[0].replace('.', '')}", "--abi", "abi3", "--abi", "none",
            *(f"--platform={tag}" for tag in platforms())]


def qemu_version() -> str:
    return subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.splitlines()[0]


def cpuinfo_file(root: Path, cpu: str) -> Path:
    return root / "opt/edgebuild" / f"cpuinfo-{cpu}"


def run_isolated(root: Path, cmd: list[str], cpu: str = DEFAULT_CPU, timeout: int = 900) -> str:
    """``cmd`` in the arm64 userland on the emulated ``cpu``, with a clean environment (no host PIP_*
    settings). /proc (that CPU's cpuinfo over the host's x86 one), /sys and /dev are mounted in a
    private mount namespace that ends with the command:
    nothing is mounted on the host, so any number of runs may share one root filesystem, and a run that
    is killed leaves no mount behind. Mounts a killed run of an older recipe left are shed inside."""
    info = cpuinfo_file(root, cpu)
    if not info.exists() or info.read_text() != fake_cpuinfo(cpu):
        info.parent.mkdir(parents=True, exist_ok=True)
        partial = info.with_name(f"{info.name}.{os.getpid()}")
        partial.write_text(fake_cpuinfo(cpu))
        partial.replace(info)
    targets = [root / "proc/cpuinfo", root / "proc", root / "sys", root / "dev"]
    shed = [f"while umount -l {shlex.quote(str(t))} 2>/dev/null; do :; done" for t in targets]
    mounts = [["mount", "-t", "proc", "proc", str(root / "proc")], ["mount", "-t", "sysfs", "sysfs", str(root / "sys")],
              ["mount", "--bind", "/dev", str(root / "dev")], ["mount", "--bind", str(info), str(root / "proc/cpuinfo")]]
    env = ["env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME=/root", "LANG=C.UTF-8",
           "DEBIAN_FRONTEND=noninteractive", f"QEMU_CPU={cpu}"]
    script = "; ".join(shed) + "; " + " && ".join([*map(shlex.join, mounts),
                                                   "exec " + shlex.join(["chroot", str(root), *env, *cmd])])
    return _run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], timeout=timeout)
