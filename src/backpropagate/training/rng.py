"""Random-number generator states, captured at a step boundary and put back later.

Dropout draws from torch's generator, so a resumed run (or a step redone after an out-of-memory error)
only repeats the interrupted run bit for bit if the generators continue from the same state. Python's
and numpy's generators are kept too, for callbacks and data code that use them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class RngState:
    python: Any
    numpy: Any
    torch_cpu: torch.Tensor
    cuda: list[torch.Tensor] = field(default_factory=list)


def capture_rng(*, python: bool = True) -> RngState:
    """The current state of every generator (``python=False`` skips Python's and numpy's, for speed)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return RngState(python=random.getstate() if python else None,
                    numpy=np.random.get_state(legacy=True) if python else None,
                    torch_cpu=torch.get_rng_state(), cuda=cuda)


def restore_rng(state: RngState) -> None:
    torch.set_rng_state(state.torch_cpu)
    if state.cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state.cuda)
    if state.python is not None:
        random.setstate(state.python)
    if state.numpy is not None:
        np.random.set_state(state.numpy)


def rng_to_json(state: RngState) -> dict[str, Any]:
    """Python's and numpy's states as plain JSON (the torch states go to a safetensors file)."""
    version, internal, gauss = state.python
    name, keys, pos, has_gauss, cached = state.numpy
    return {"python": [version, list(internal), gauss],
            "numpy": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]}


def rng_tensors(state: RngState) -> dict[str, torch.Tensor]:
    tensors = {"torch_cpu": state.torch_cpu}
    tensors.update({f"cuda_{i}": s for i, s in enumerate(state.cuda)})
    return tensors


def rng_from_saved(saved_json: dict[str, Any], tensors: dict[str, torch.Tensor]) -> RngState:
    version, internal, gauss = saved_json["python"]
    name, keys, pos, has_gauss, cached = saved_json["numpy"]
    cuda = [tensors[f"cuda_{i}"] for i in range(sum(k.startswith("cuda_") for k in tensors))]
    return RngState(python=(version, tuple(internal), gauss),
                    numpy=(name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached),
                    torch_cpu=tensors["torch_cpu"], cuda=cuda)
