"""An arm64 Debian 12 userland under qemu-user, with the runtime installed the way a Pi user
installs it (`pip install .` of this project), cached outside the checkout.

Recipe (../shared/FACTS.md): debootstrap --foreign, qemu-aarch64-static copied in, second stage
under binfmt, then python3-venv from Debian and the runtime's wheels from PyPI. Debian 12's qemu
7.2 shows the host's x86 /proc/cpuinfo, on which onnxruntime's cpuinfo library segfaults, so
every run bind-mounts an ARM /proc/cpuinfo over it.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, Optional

from stages.core.errors import BuildError
from stages.core.layout import PROJECT_ROOT

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
DEBIAN_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
TORCH = "torch==2.9.1"  # the .pt backend: a CPU-only aarch64 wheel (FACTS.md); base deps come from pyproject
QEMU = "/usr/bin/qemu-aarch64-static"
HOST_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
HOST_CA = "/opt/edgebuild/host-ca.crt"
VENV = "/opt/edgebuild/venv"
# What the venv is built from: a change here or in the runtime's files reinstalls the project.
RUNTIME_FILES = ("pyproject.toml", "runtime")
FAKE_CPUINFO = "".join(f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
                       "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n"
                       "CPU revision\t: 3\n\n" for i in range(4))


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
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
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


def _runtime_digest() -> str:
    files = [p for name in RUNTIME_FILES for p in sorted((PROJECT_ROOT / name).rglob("*") if (PROJECT_ROOT / name).is_dir()
                                                           else [PROJECT_ROOT / name])
             if p.is_file() and "__pycache__" not in p.parts]
    return _digest(TORCH.encode(), *(f.relative_to(PROJECT_ROOT).as_posix().encode() + f.read_bytes() for f in files))


def ensure_rootfs() -> Path:
    """The cached root filesystem (Debian + python3-venv); built once per recipe."""
    root = cache_dir() / f"rootfs-{_digest(SUITE.encode(), MIRROR.encode(), ' '.join(DEBIAN_PACKAGES).encode())}"
    if (root / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _run(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase", SUITE, str(partial), MIRROR], timeout=900)
    shutil.copy(QEMU, partial / "usr/bin/qemu-aarch64-static")
    _run(["chroot", str(partial), "/debootstrap/debootstrap", "--second-stage"], timeout=1200)
    shutil.copy("/etc/resolv.conf", partial / "etc/resolv.conf")
    with mounted(partial):
        chroot(partial, ["apt-get", "update", "-qq"])
        chroot(partial, ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *DEBIAN_PACKAGES])
        chroot(partial, ["apt-get", "clean"])
    partial.rename(root)
    (root / ".complete").write_text("ok\n")
    return root


def ensure_venv(root: Path) -> str:
    """The runtime's venv inside ``root``: `pip install .` of this project, plus torch for `.pt`."""
    _copy_host_ca(root)
    stamp = root / "opt/edgebuild/.venv-digest"
    digest = _runtime_digest()
    if stamp.exists() and stamp.read_text().strip() == digest:
        return VENV
    src = root / "opt/edgebuild/src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for name in RUNTIME_FILES:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, src / name)
    (src / "stages").mkdir()  # pyproject packages `stages*` too; a board needs only the runtime
    (src / "README.md").write_text("edgebuild runtime\n")
    with mounted(root):
        if not (root / VENV.lstrip("/") / "bin/python").exists():
            chroot(root, ["python3", "-m", "venv", VENV])
        pip = [f"{VENV}/bin/python", "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        chroot(root, [*pip, "/opt/edgebuild/src"], timeout=1800)  # the README's `pip install .`
        chroot(root, [*pip, TORCH], timeout=1800)  # PyPI's aarch64 wheel is the CPU build
    stamp.write_text(digest + "\n")
    return VENV


def _copy_host_ca(root: Path) -> None:
    """pip inside trusts what the host trusts (a site's TLS proxy CA included)."""
    for bundle in HOST_CA_BUNDLES:
        if Path(bundle).exists():
            target = root / HOST_CA.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(bundle, target)
            return


@contextlib.contextmanager
def mounted(root: Path) -> Iterator[None]:
    """/proc (with an ARM cpuinfo over the host's), /dev and /sys inside ``root``, for one block."""
    fake = root / "opt/edgebuild/cpuinfo"
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_text(FAKE_CPUINFO)
    done: list[Path] = []
    try:
        for kind, target in (("proc", "proc"), ("sysfs", "sys")):
            _run(["mount", "-t", kind, kind, str(root / target)])
            done.append(root / target)
        _run(["mount", "--bind", "/dev", str(root / "dev")])
        done.append(root / "dev")
        _run(["mount", "--bind", str(fake), str(root / "proc/cpuinfo")])
        done.append(root / "proc/cpuinfo")
        yield
    finally:
        for path in reversed(done):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def chroot(root: Path, cmd: list[str], timeout: int = 900, cpu: Optional[str] = None) -> str:
    """Run ``cmd`` in the arm64 userland with a clean environment (no host PIP_* settings)."""
    env = ["env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME=/root", "LANG=C.UTF-8",
           "DEBIAN_FRONTEND=noninteractive", f"PIP_CERT={HOST_CA}", f"SSL_CERT_FILE={HOST_CA}"]
    if cpu:
        env.append(f"QEMU_CPU={cpu}")
    return _run(["chroot", str(root), *env, *cmd], timeout=timeout)
