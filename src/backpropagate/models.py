"""Load a base model and tokenizer by name (hub id or local folder; 4-bit NF4 for QLoRA), with coded errors.

Below training and the data tools alike: both load models the same way (``trust_remote_code`` off unless asked).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ModelSettings, general_settings
from .errors import BackpropagateError
from .logs import redact

if TYPE_CHECKING:  # torch loads when a model does, so the data tools start without it
    import torch


def pick_device() -> torch.device:
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def pick_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU supports it, fp32 on the CPU (CPU half precision is slow and inexact)."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or Path(name).exists()


def load_tokenizer(settings: ModelSettings) -> Any:
    from transformers import AutoTokenizer

    name = settings.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=settings.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - every loader failure becomes one coded error
        raise _load_error(name, exc) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def four_bit_config(compute_dtype: torch.dtype) -> Any:
    """QLoRA's quantization: NF4 codes, double-quantized scales, matmuls in ``compute_dtype``."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def load_model(settings: ModelSettings, device: torch.device, dtype: torch.dtype) -> Any:
    """The base model on ``device``; with ``settings.load_in_4bit`` its linear layers are 4-bit NF4."""
    from transformers import AutoModelForCausalLM

    name = settings.name
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": settings.trust_remote_code}
    if settings.load_in_4bit:
        kwargs["quantization_config"] = four_bit_config(dtype)
        if device.type == "cuda":
            kwargs["device_map"] = {"": device.index or 0}
    try:
        with quiet_progress():
            model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise _load_error(name, exc) from exc
    model.config.use_cache = False  # training: a KV cache would also break packed attention
    # transformers wraps Module.to with functools.wraps, whose stub drops the method's binding of self.
    return model if settings.load_in_4bit else model.to(device)  # type: ignore[arg-type]


def check_model_source(name: str) -> None:
    """A model that cannot load fails now, before the start-up table and any run id: a path that is not there,
    or a hub id that is neither in the Hugging Face cache nor on a reachable Hub (one request, no retries:
    transformers would retry for half a minute before saying so)."""
    error = _missing_folder(name)
    if error is not None:
        raise error
    if not Path(name).expanduser().exists():
        _check_hub_id(name)


def _check_hub_id(name: str) -> None:
    from huggingface_hub import constants, file_exists, try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return
    except ValueError as exc:  # huggingface_hub's HFValidationError: not the shape of a repo id
        raise BackpropagateError("DEP_MODEL_LOAD_FAILED", f"{redact(name)!r} is not a model folder or a hub id: "
                                 f"{redact(str(exc))[:200]}", hint=_HUB_HINT, retryable=False) from exc
    if constants.HF_HUB_OFFLINE:
        raise BackpropagateError("DEP_MODEL_LOAD_FAILED", f"model {redact(name)!r} is not in the Hugging Face "
                                 "cache, and HF_HUB_OFFLINE is set.", hint=_HUB_HINT, retryable=False)
    try:
        found = file_exists(name, "config.json")
    except Exception as exc:  # noqa: BLE001 - DNS, refused, timeout: the Hub cannot be reached
        raise BackpropagateError("DEP_MODEL_LOAD_FAILED", f"model {redact(name)!r} is not in the Hugging Face "
                                 f"cache and the Hub cannot be reached ({type(exc).__name__}: "
                                 f"{redact(str(exc))[:160]}).", hint=_HUB_HINT, retryable=True) from exc
    if not found:
        raise BackpropagateError("DEP_MODEL_LOAD_FAILED", f"there is no model {redact(name)!r} on the Hub "
                                 "(or it is private or gated and you are not logged in).",
                                 hint="Check the id for typos (`backprop info --presets` lists short names); "
                                      "for a gated model run `hf auth login`.", retryable=False)


_HUB_HINT = ("Check the id for typos; download it once while online (`hf download <id>`), or pass a local "
             "folder holding config.json and the weights.")


def _missing_folder(name: str) -> BackpropagateError | None:
    if _looks_like_path(name) and not Path(name).expanduser().exists():
        return BackpropagateError("DEP_MODEL_LOAD_FAILED", f"model folder {redact(name)!r} does not exist.",
                                  hint="Check the path, or pass a hub id such as Qwen/Qwen2.5-7B-Instruct.",
                                  retryable=False)
    return None


def _load_error(name: str, exc: Exception) -> BackpropagateError:
    missing = _missing_folder(name)
    if missing is not None:
        return missing
    detail = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return BackpropagateError("DEP_MODEL_LOAD_FAILED", f"could not load model {redact(name)!r}: {detail[:300]}")


@contextmanager
def peft_wrapping() -> Iterator[None]:
    """While peft wraps a model: it reads transformers' deprecated ``is_gradient_checkpointing``, a FutureWarning
    on every run that only a peft release can fix. Hidden here alone; shown with log_level=DEBUG."""
    with warnings.catch_warnings():
        if general_settings().log_level != "DEBUG":
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                    category=FutureWarning)
        yield


@contextmanager
def quiet_progress() -> Iterator[None]:
    """No transformers progress bars (loading weights: a bar per load, interleaved with our own output and
    bars); restored after. Shown with log_level=DEBUG."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    if general_settings().log_level != "DEBUG":
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
