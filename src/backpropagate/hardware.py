"""What the machine has, and the defaults that follow from it."""

from __future__ import annotations

import platform
import sys
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
    extras = {"export": ["gguf", "llama-cpp-python"], "ui": ["gradio"], "qlora": ["bitsandbytes"],
              "tracking": ["tensorboard", "mlflow", "wandb"], "unsloth": ["unsloth"]}
    report["extras"] = {name: all(version(d) for d in dists) for name, dists in extras.items()}
    return report
