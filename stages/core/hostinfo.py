"""What this build host's INT8 arithmetic is: the ISA features that decide which integer kernels a
backend picks, and the backend's version. Numbers measured with the host's fused kernels carry this,
so they are never mistaken for a board's.

On x86, ONNX Runtime's u8 x s8 kernels without VNNI (AVX-512 VNNI or AVX-VNNI) add pairs of products in
16 bits, which can saturate (ORT's quantization docs); with VNNI they accumulate in 32 bits. ARM has no
such saturation; its dot-product extension (asimddp) picks faster kernels with the same results.
"""
from __future__ import annotations

import platform
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

# ISA flags (as /proc/cpuinfo spells them) that change the integer kernels a backend runs.
INT8_FLAGS = {"x86_64": ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"),
              "aarch64": ("asimd", "asimddp", "i8mm", "sve")}
VNNI = ("avx512_vnni", "avx_vnni")


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo text, x86 (`flags`) or ARM (`Features`)."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


@lru_cache(maxsize=1)
def int8_arithmetic() -> dict[str, Any]:
    machine = platform.machine()
    try:
        model, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        model, flags = "unknown", set()
    wanted = INT8_FLAGS.get(machine, ())
    info: dict[str, Any] = {"machine": machine, "cpu": model or "unknown",
                            "isa": sorted(f for f in wanted if f in flags)}
    if machine == "x86_64":
        info["vnni"] = any(f in flags for f in VNNI)
        info["u8s8_note"] = ("VNNI: 32-bit accumulation" if info["vnni"] else
                             "no VNNI: ONNX Runtime's u8 x s8 kernels sum pairs in 16 bits and can saturate")
    elif machine == "aarch64":
        info["dotprod"] = "asimddp" in flags
    for package in ("onnxruntime", "torch"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return info
