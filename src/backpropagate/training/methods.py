"""Which training method a configuration asks for, and whether this install and this model can run it.

Checked before anything heavy is loaded, so a bad combination fails in a second with a coded error
instead of after minutes of loading weights.
"""

from __future__ import annotations

from typing import Literal, TypedDict

from ..config import Settings
from ..errors import BackpropagateError, invalid_value
from .defaults import needs_bitsandbytes

DORA_MIN_PEFT = "0.10.0"
QLORA_HINT = "pip install backpropagate[qlora]"


def method_name(settings: Settings) -> str:
    """lora, qlora, dora (DoRA, 4-bit or not) or full: the memory plan's method names."""
    if settings.training.mode == "full":
        return "full"
    if settings.lora.use_dora:
        return "dora"
    return "qlora" if settings.model.load_in_4bit else "lora"


def check_method(settings: Settings) -> None:
    """Refuse combinations that cannot mean anything; no imports, cheap enough for ``Trainer()``."""
    full = settings.training.mode == "full"
    lora, model = settings.lora, settings.model
    if full and model.load_in_4bit:
        raise invalid_value("load_in_4bit", True, "False with mode='full' (4-bit weights cannot be trained)")
    if full and lora.use_dora:
        raise invalid_value("use_dora", True, "False with mode='full' (DoRA is an adapter)")
    if full and lora.init_weights != "default":
        raise invalid_value("init_lora_weights", lora.init_weights, "'default' with mode='full' (no adapter)")
    if lora.init_weights == "pissa" and model.load_in_4bit:
        raise invalid_value("init_lora_weights", "pissa", "'loftq' or 'default' with load_in_4bit=True (PiSSA "
                            "moves the principal components out of the base weights, which 4-bit cannot hold)")
    if lora.use_dora and lora.init_weights != "default" and not full:
        raise invalid_value("init_lora_weights", lora.init_weights, "'default' with use_dora=True")
    if lora.init_weights == "loftq" and not model.load_in_4bit:
        raise invalid_value("init_lora_weights", "loftq", "load_in_4bit=True as well (LoftQ offsets the error "
                            "of the 4-bit base)")


def check_dependencies(settings: Settings, optim: str) -> None:
    """The extras and versions the chosen method and optimizer need are installed."""

    if settings.model.load_in_4bit:
        require_bitsandbytes("QLoRA (load_in_4bit=True)")
    if needs_bitsandbytes(optim):
        require_bitsandbytes(f"optim={optim!r}")
    if settings.lora.use_dora and settings.training.mode == "lora":
        check_min_version("peft", DORA_MIN_PEFT, "DoRA (use_dora=True)")


def require_bitsandbytes(feature: str) -> None:
    """DEP_EXTRA_MISSING naming the qlora extra when bitsandbytes cannot be imported."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise BackpropagateError("DEP_EXTRA_MISSING",
                                 f"{feature} needs bitsandbytes, which cannot be imported ({exc}).",
                                 hint=QLORA_HINT) from exc


def check_min_version(dist: str, minimum: str, feature: str) -> str:
    """The installed version of ``dist``; DEP_VERSION_TOO_OLD when it is below ``minimum``."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    try:
        found = version(dist)
    except PackageNotFoundError:
        raise BackpropagateError("DEP_EXTRA_MISSING", f"{feature} needs {dist} >= {minimum}; it is not installed.",
                                 hint=f"pip install '{dist}>={minimum}'") from None
    if Version(found) < Version(minimum):
        raise BackpropagateError("DEP_VERSION_TOO_OLD",
                                 f"{feature} needs {dist} >= {minimum}; {found} is installed.",
                                 hint=f"pip install -U '{dist}>={minimum}'")
    return found


METHODS = ("lora", "qlora", "dora", "full")


class MethodArguments(TypedDict, total=False):
    """The ``Trainer`` arguments a method name sets."""

    load_in_4bit: bool
    use_dora: bool
    mode: Literal["lora", "full"]


def method_arguments(method: str) -> MethodArguments:
    """Trainer arguments for a method name of ``backprop plan --method``."""
    table: dict[str, MethodArguments] = {"lora": {"load_in_4bit": False}, "qlora": {"load_in_4bit": True},
                                         "dora": {"use_dora": True}, "full": {"mode": "full"}}
    if method not in table:
        raise invalid_value("method", method, "one of " + ", ".join(METHODS))
    return table[method]
