"""The README's table of what the smart defaults choose for every model preset on 8-24 GB cards.

``python -m backpropagate.plan_table`` prints it; ``--write README.md`` replaces the marked section, and
``tests/test_defaults_fit.py`` checks that the README holds exactly this output. Plain defaults (no
BACKPROPAGATE_* variables), bf16 cards, the qlora extra installed; from presets' dimensions, offline.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from .config import resolve_settings
from .hardware import HardwareFacts
from .plan import GB, model_shape
from .presets import MODEL_PRESETS
from .training.defaults import RunDefaults, decide_defaults
from .training.fit import memory_plan

CARDS_GB = (8, 12, 16, 24)
BEGIN, END = "<!-- plan-table:begin -->", "<!-- plan-table:end -->"


def _setup(d: RunDefaults) -> str:
    targets = d.target_modules if isinstance(d.target_modules, str) else ",".join(d.target_modules)
    lowered = " (lowered)" if any(c.startswith("lora=") for c in d.changes) else ""
    kind = "QLoRA" if d.load_in_4bit else "LoRA"
    return f"{kind} r={d.lora_r} {targets}{lowered}, batch {d.batch_size}×{d.gradient_accumulation}"


def cell(model: str, card_gb: float) -> str:
    """What the defaults choose for ``model`` on a ``card_gb`` card, and whether it fits (or why not)."""
    settings = resolve_settings(model=model)
    facts = replace(HardwareFacts.gpu(card_gb, name=f"{card_gb:g} GB card"), bitsandbytes=True)
    defaults = decide_defaults(settings, facts)
    plan = memory_plan(settings, defaults)
    peak = plan.total_bytes / GB
    if plan.fits:
        tight = "" if peak <= card_gb * 0.9 else " (inside the safety margin)"
        return f"{_setup(defaults)}: {peak:.1f} GB{tight}"
    fix = next((s for s in plan.suggestions if s.fits), None)
    then = (f"; {fix.change} -> {fix.total_bytes / GB:.1f} GB" if fix
            else f"; the weights alone are {plan.components['weights'] / GB:.1f} GB")
    return f"**does not fit**: {peak:.1f} GB even at {_setup(defaults)}{then}"


def largest_fitting_preset(facts: HardwareFacts, *, below: str | None = None) -> str | None:
    """The largest model preset (by parameters) whose plan, with the smart defaults, fits ``facts`` (a GPU: its
    card; the CPU: its RAM); with ``below``, only presets smaller than that model. None when none fits."""
    sized = sorted(MODEL_PRESETS, key=lambda p: model_shape(p.key).total_params, reverse=True)
    if below is not None:
        limit = model_shape(below).total_params
        sized = [p for p in sized if model_shape(p.key).total_params < limit]
    for preset in sized:
        settings = resolve_settings(model=preset.key)
        if memory_plan(settings, decide_defaults(settings, facts)).fits:
            return preset.key
    return None


def smallest_preset() -> str:
    """The model preset with the fewest parameters."""
    return min(MODEL_PRESETS, key=lambda p: model_shape(p.key).total_params).key


def fit_table() -> str:
    """The Markdown table, one row per model preset, one column per card size."""
    head = "| Preset | " + " | ".join(f"{gb} GB" for gb in CARDS_GB) + " |"
    rows = [head, "|---" * (len(CARDS_GB) + 1) + "|"]
    for preset in MODEL_PRESETS:
        rows.append(f"| `{preset.key}` | " + " | ".join(cell(preset.key, gb) for gb in CARDS_GB) + " |")
    return "\n".join(rows)


def readme_section(text: str) -> str:
    """What stands between the table's markers in ``text``."""
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def main(argv: list[str] | None = None) -> int:
    """Print the table, or with ``--write README.md`` put it between the README's markers."""
    args = sys.argv[1:] if argv is None else argv
    table = fit_table()
    if not args:
        print(table)
        return 0
    path = Path(args[-1] if args[0] == "--write" and len(args) > 1 else "README.md")
    text = path.read_text(encoding="utf-8")
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    path.write_text(f"{before}{BEGIN}\n{table}\n{END}{after}", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
