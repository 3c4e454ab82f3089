"""The host's pip for the arm64 board: `--platform`/`--python-version` pick the wheels, but pip
evaluates dependency markers against the machine it runs on, so on x86 torch's aarch64 wheel would
pull its `platform_machine == "x86_64"` CUDA wheels (3 GB). This runs the host's pip with the
board's marker environment (rootfs.BOARD_MARKERS: Debian 12's python3 on aarch64).

    python board_pip.py download --platform ... -d WHEELHOUSE REQ...             # the wheelhouse
    python board_pip.py install --platform ... --target SITE_PACKAGES REQ...      # the board's venv
"""
import sys
from pathlib import Path

from pip._vendor.packaging import markers

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from stages.arm64.rootfs import BOARD_MARKERS  # noqa: E402

_host_environment = markers.default_environment


def _board_environment() -> dict:
    return {**_host_environment(), **BOARD_MARKERS}


markers.default_environment = _board_environment

if __name__ == "__main__":
    from pip._internal.cli.main import main

    sys.exit(main(sys.argv[1:]))
