"""LoftQ initialisation of a LoRA adapter on a 4-bit (bitsandbytes NF4) base.

For every adapted layer the adapter starts as the best rank-r approximation of what 4-bit quantization
lost: ``scaling * B @ A ~= W - dequant(Q(W))``, so base + adapter starts closer to the original model.
This is peft's ``replace_lora_weights_loftq`` algorithm; peft's own function hard-codes a CUDA/XPU
device (``peft/utils/loftq_utils.py``), so this version runs wherever bitsandbytes' 4-bit kernels do,
the CPU included. It reads the original weights from the model's safetensors files, one tensor at a time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from ..errors import BackpropagateError

_PREFIX = "base_model.model."


class _Weights:
    """Original tensors by name from a model's (possibly sharded) safetensors files."""

    def __init__(self, model_name: str) -> None:
        from safetensors import safe_open

        folder = Path(model_name).expanduser()
        if not folder.is_dir():  # a hub id: from_pretrained has just put its files in the HF cache
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(model_name, local_files_only=True, allow_patterns=["*.safetensors*"]))
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            self.files = {key: folder / shard for key, shard in weight_map.items()}
            return
        self.files = {}
        for file in sorted(folder.glob("*.safetensors")):
            with safe_open(file, framework="pt") as f:
                self.files.update(dict.fromkeys(f.keys(), file))
        if not self.files:
            raise BackpropagateError("DEP_MODEL_LOAD_FAILED",
                                     f"LoftQ needs the safetensors weights of {model_name!r}; none were found.")

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        key = name if name in self.files else next(
            (k for k in self.files if k.endswith("." + name.split(".", 1)[-1])), None)
        if key is None:
            raise BackpropagateError("DEP_MODEL_LOAD_FAILED", f"LoftQ: weight {name!r} is not in the checkpoint.")
        with safe_open(self.files[key], framework="pt") as f:
            return f.get_tensor(key)


@torch.no_grad()
def init_loftq(peft_model: Any, model_name: str, adapter: str = "default") -> int:
    """Set A and B of every 4-bit LoRA layer from the SVD of its quantization error; returns the count."""
    import bitsandbytes.functional as bnbf
    from bitsandbytes.nn import Params4bit
    from peft.tuners.lora.bnb import Linear4bit

    weights = _Weights(model_name)
    done = 0
    for name, module in peft_model.named_modules():
        if not isinstance(module, Linear4bit) or adapter not in module.lora_A:
            continue
        base = module.get_base_layer().weight
        if not isinstance(base, Params4bit):
            raise TypeError(f"LoftQ: {name} is a 4-bit layer without 4-bit weights ({type(base).__name__})")
        original = weights.get(name.removeprefix(_PREFIX) + ".weight").to(torch.float32)
        quantized = bnbf.dequantize_4bit(base.data, base.quant_state).to(torch.float32)
        u, s, vh = torch.linalg.svd(original - quantized, full_matrices=False)
        r = module.r[adapter]
        root = s[:r].sqrt() / math.sqrt(module.scaling[adapter])
        lora_a, lora_b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        if not isinstance(lora_a, torch.Tensor) or not isinstance(lora_b, torch.Tensor):
            raise TypeError(f"LoftQ: the LoRA layers of {name} have no weight tensors")
        lora_b.copy_((u[:, :r] * root).to(lora_b.dtype))
        lora_a.copy_((root[:, None] * vh[:r]).to(lora_a.dtype))
        done += 1
    if not done:
        raise BackpropagateError("INPUT_INVALID_VALUE", "init_lora_weights='loftq' found no 4-bit LoRA layer.")
    return done
