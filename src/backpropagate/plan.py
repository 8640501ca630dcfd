"""Pre-flight memory plan: will a run fit the card, and if not, what would make it fit.

Only the model's config is read (a preset's known dimensions, or ``config.json`` of a local folder or
the HF cache); the model is built on the meta device to count its parameters and find every linear
layer, without weights. The peak of a training step is then added up from what training holds at once
in steady state (after the first optimizer step, inside gradient accumulation):

* base weights: model dtype, or 4-bit NF4 with double quantization (~4.13 bits) for every linear layer
  but the output head under QLoRA;
* trainable parameters, their gradients and the optimizer states (LoRA/DoRA: the adapter, kept in fp32
  by peft; full: every weight in the model dtype);
* activations saved for the backward pass, per layer and token (counted from which tensors autograd
  keeps in a Llama-style block: norms, projections, attention, gated MLP, LoRA dropout copies), or only
  each layer's input plus one recomputed layer under gradient checkpointing;
* the logits and the fp32 log-softmax the loss keeps (tokens x vocabulary: large for 150k vocabularies),
  or with the chunked loss only one chunk of them (``training.chunked_loss``);
* overhead: on a GPU, a fixed allowance for the CUDA context and allocator slack; on the CPU, 75 % of
  the activation and logit memory, because glibc's malloc keeps freed activation blocks in its
  fragmented heap (measured: peak RSS exceeds the live tensors by 25-100 % of that memory;
  ``tests/test_memory_plan.py`` checks the whole estimate against a real step's peak RSS).

The estimate is for ``batch_size`` full rows of ``seq_len`` tokens (packed rows are nearly full).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import declared_default
from .errors import BackpropagateError
from .presets import find_model_preset, preset_for_hub_id, resolve_target_modules

LOSS_CHUNK_TOKENS = 1024  # tokens whose logits exist at once in the chunked loss (training.chunked_loss)
LOSS_CHUNK_ELEMENTS = 1024 * 32768  # at most this many logits at once (128 MB fp32): fewer tokens for 151k

GB = 1024**3
FULL_FT_MAX_PARAMS = 4_500_000_000  # the "4 B class": Qwen-3.5-4B counts 4.2 B, the 7 B presets 7.2-7.6 B
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes + 8-bit absmax per 64 + fp32 per 256 blocks
CUDA_OVERHEAD_BYTES = int(0.75 * GB)  # CUDA context, cuBLAS workspace, allocator slack
# Share of activation memory glibc's heap holds on to (measured 0.25-1.0). Logit buffers are above its
# mmap threshold (32 MB), go back to the system when freed, and carry none.
CPU_HEAP_SLACK = 0.75
# Optimizer state bytes per trainable parameter, by transformers optimizer name (element size = dtype size).
_OUTPUT_PROJ = {"o_proj", "out_proj", "down_proj", "dense", "wo", "c_proj"}
_STATE_ELEMENTS = {"sgd": 0, "adafactor": 0, "adagrad": 1, "rmsprop": 1, "lion": 1, "ademamix": 3}


@dataclass(frozen=True)
class LinearLayer:
    name: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know about a model, read from its config alone."""

    name: str
    model_type: str
    total_params: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    linears: tuple[LinearLayer, ...]  # every nn.Linear except the output head
    head_params: int  # parameters of the output head (0 when tied to the embedding)

    @property
    def linear_params(self) -> int:
        return sum(x.in_features * x.out_features for x in self.linears)


def _config_for(name: str, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    folder = Path(name).expanduser()
    preset = None if folder.exists() else (find_model_preset(name) or preset_for_hub_id(name))
    if preset is not None:
        return AutoConfig.for_model(preset.model_type, **preset.config_kwargs())
    try:
        config = AutoConfig.from_pretrained(str(folder) if folder.exists() else name,
                                            trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, broken config: one coded error
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackpropagateError(
            "DEP_MODEL_LOAD_FAILED", f"cannot read the config of {name!r}: {detail[:300]}",
            hint="The plan reads config.json only: pass a preset name (`backprop info --presets`), a local "
                 "model folder, or a hub id that is in the HF cache or reachable.") from exc
    return config.get_text_config()


@functools.lru_cache(maxsize=32)
def model_shape(name: str, *, trust_remote_code: bool = False) -> ModelShape:
    """Count parameters and list linear layers of ``name`` on the meta device (no weights are read)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = _config_for(name, trust_remote_code)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001
        raise BackpropagateError("DEP_MODEL_LOAD_FAILED",
                                 f"cannot build {name!r} from its config: {type(exc).__name__}: {exc}"[:400]) from exc
    head = model.get_output_embeddings()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    linears = tuple(LinearLayer(n, m.in_features, m.out_features) for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and m is not head)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return ModelShape(
        name=name, model_type=str(config.model_type), total_params=sum(p.numel() for p in model.parameters()),
        hidden_size=int(config.hidden_size), intermediate_size=int(getattr(config, "intermediate_size", 0) or 0),
        num_layers=int(config.num_hidden_layers), num_heads=heads,
        num_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads), head_dim=head_dim,
        vocab_size=int(config.vocab_size), tied_embeddings=tied, linears=linears,
        head_params=0 if tied or head is None else head.weight.numel())


def check_full_finetune_size(name: str, *, trust_remote_code: bool = False) -> int:
    """The parameter count of ``name``; RUNTIME_FULL_FT_MODEL_TOO_LARGE above the 4 B class."""
    params = model_shape(name, trust_remote_code=trust_remote_code).total_params
    if params > FULL_FT_MAX_PARAMS:
        raise BackpropagateError(
            "RUNTIME_FULL_FT_MODEL_TOO_LARGE",
            f"{name} has {params / 1e9:.1f} B parameters; mode='full' trains every weight and is limited "
            f"to {FULL_FT_MAX_PARAMS / 1e9:.1f} B (the 4 B class).")
    return params


@dataclass(frozen=True)
class PlanSettings:
    """The knobs that change memory; ``Trainer.plan`` fills them from its settings and smart defaults."""

    method: str = "lora"  # lora | qlora | dora | full
    lora_r: int = 256
    target_modules: str | tuple[str, ...] = declared_default("target_modules")
    lora_dropout: float = 0.05
    precision: str = "bf16"  # model dtype: bf16 | fp16 | fp32
    optim: str = "adamw_torch"
    gradient_checkpointing: bool = True
    batch_size: int = 1
    seq_len: int = 2048
    device: str = "cuda"
    chunked_loss: bool = True  # training.chunked_loss: one chunk's logits at a time


@dataclass(frozen=True)
class Suggestion:
    change: str
    total_bytes: int
    fits: bool


@dataclass(frozen=True)
class MemoryPlan:
    """Peak memory of one training step, by component, and whether it fits ``capacity_bytes``."""

    model: str
    params: int
    settings: PlanSettings
    trainable_params: int
    components: dict[str, int]  # weights, adapter, gradients, optimizer, activations, logits, overhead
    capacity_bytes: int | None
    capacity_label: str
    suggestions: tuple[Suggestion, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())
    gguf_export: str | None = None  # export.preflight's verdict line, known before training
    changes: tuple[str, ...] = field(default=())  # what the smart defaults changed to fit the card, and why

    @property
    def total_bytes(self) -> int:
        return sum(self.components.values())

    @property
    def fits(self) -> bool | None:
        return None if self.capacity_bytes is None else self.total_bytes <= self.capacity_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "params": self.params, "trainable_params": self.trainable_params,
                "settings": self.settings.__dict__, "components_gb": {k: round(v / GB, 3) for k, v in
                                                                       self.components.items()},
                "total_gb": round(self.total_bytes / GB, 3), "capacity_gb":
                None if self.capacity_bytes is None else round(self.capacity_bytes / GB, 1),
                "fits": self.fits, "notes": list(self.notes), "gguf_export": self.gguf_export,
                "changes": list(self.changes), "suggestions": [s.__dict__ | {"total_gb": round(s.total_bytes / GB, 2)}
                                                   for s in self.suggestions]}

    def report(self) -> str:
        s = self.settings
        lines = [f"model      {self.model}  ({self.params / 1e9:.2f} B parameters)",
                 f"method     {s.method}" + ("" if s.method == "full" else f"  r={s.lora_r} targets="
                                              f"{s.target_modules if isinstance(s.target_modules, str) else ','.join(s.target_modules)}"),
                 f"run        batch {s.batch_size} x {s.seq_len} tokens, {s.precision}, optim {s.optim}, "
                 f"gradient checkpointing {'on' if s.gradient_checkpointing else 'off'}"]
        lines.extend(f"chosen     {change}" for change in self.changes)
        lines.append("")
        for key, value in self.components.items():
            lines.append(f"  {key:<18} {value / GB:8.2f} GB")
        lines.append(f"  {'peak (estimate)':<18} {self.total_bytes / GB:8.2f} GB")
        lines.append("")
        if self.capacity_bytes is None:  # self.fits is None
            lines.append(f"capacity   unknown ({self.capacity_label})")
        else:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"verdict    {verdict} {self.capacity_label} ({self.capacity_bytes / GB:.1f} GB)")
        for sug in self.suggestions:
            mark = "fits" if sug.fits else "still too big"
            lines.append(f"  try: {sug.change:<46} -> {sug.total_bytes / GB:6.2f} GB ({mark})")
        lines.extend(f"note       {note}" for note in self.notes)
        if self.gguf_export:
            lines.append(f"export     {self.gguf_export}")
        return "\n".join(lines)


def useful_rank(shape: ModelShape, targets: str | tuple[str, ...]) -> int:
    """The highest LoRA rank that adds anything on ``shape``: the widest targeted layer's min(in, out) (a
    rank above a layer's width only costs time); 0 when no layer is targeted."""
    wanted = resolve_target_modules(targets, [x.name for x in shape.linears])
    return max((min(x.in_features, x.out_features) for x in shape.linears if _is_target(x, wanted)), default=0)


def _is_target(layer: LinearLayer, targets: str | tuple[str, ...]) -> bool:
    if targets == "all-linear":
        return True
    names = (targets,) if isinstance(targets, str) else targets
    return layer.name.rsplit(".", 1)[-1] in names or layer.name in names


def _state_elements(optim: str) -> tuple[int, bool]:
    """Optimizer state elements per parameter and whether they are 8-bit."""
    eight_bit = "8bit" in optim or optim in {"adamw_bnb_8bit", "rmsprop_bnb"}
    for key, n in _STATE_ELEMENTS.items():
        if optim.startswith(key) or f"_{key}" in optim:
            return n, eight_bit
    return 2, eight_bit  # AdamW and friends: first and second moment


def estimate(shape: ModelShape, s: PlanSettings) -> tuple[int, dict[str, int]]:
    """Trainable parameter count and the peak bytes by component for ``s``."""
    dtype_bytes = {"bf16": 2, "fp16": 2, "fp32": 4}[s.precision]
    full = s.method == "full"
    wanted = resolve_target_modules(s.target_modules, [x.name for x in shape.linears])
    targets = [x for x in shape.linears if _is_target(x, wanted)]
    if s.method == "qlora":
        linear = shape.linear_params
        weights = int(linear * NF4_BYTES_PER_PARAM + (shape.total_params - linear) * dtype_bytes)
    else:
        weights = shape.total_params * dtype_bytes
    if full:
        trainable, train_bytes = shape.total_params, dtype_bytes
    else:
        trainable = sum(s.lora_r * (x.in_features + x.out_features) for x in targets)
        if s.method == "dora":
            trainable += sum(x.out_features for x in targets)
        train_bytes = 4  # peft keeps adapter weights in fp32
    elements, eight_bit = _state_elements(s.optim)
    state_bytes = elements * (1 if eight_bit else train_bytes)

    tokens = s.batch_size * s.seq_len
    per_layer = tokens * _activation_bytes_per_token(shape, s, targets, dtype_bytes)
    if s.gradient_checkpointing:  # each layer's input, plus one layer recomputed during backward
        activations = shape.num_layers * tokens * shape.hidden_size * dtype_bytes + per_layer
    else:
        activations = shape.num_layers * per_layer
    logits = _logit_bytes(shape, s, tokens)
    components = {  # every key is a line of the report
        "weights": int(weights),
        "adapter": int(trainable * train_bytes) if not full else 0,
        "gradients": int(trainable * train_bytes),
        "optimizer": int(trainable * state_bytes),
        "activations": int(activations),
        "logits": int(logits),
        "overhead": CUDA_OVERHEAD_BYTES if s.device == "cuda" else int(CPU_HEAP_SLACK * activations),
    }
    return trainable, components


def chunk_tokens_for(vocab_size: int) -> int:
    """Tokens per chunk: LOSS_CHUNK_TOKENS, fewer for vocabularies above 32k (a fixed logits budget)."""
    return max(16, min(LOSS_CHUNK_TOKENS, LOSS_CHUNK_ELEMENTS // max(vocab_size, 1)))


def _logit_bytes(shape: ModelShape, s: PlanSettings, tokens: int) -> int:
    """The plain loss of a 16-bit model keeps an fp32 copy of the logits and their log-softmax, and its
    backward adds the gradient (12 bytes per token and word); an fp32 model's logits are their own fp32
    copy (8, measured). The chunked loss holds one chunk's fp32 logits, turned into their gradient in
    place, plus the log-sum-exp temporary (8 bytes per chunk token and word)."""
    if not s.chunked_loss:
        return tokens * shape.vocab_size * (8 if s.precision == "fp32" else 12)
    return min(tokens, chunk_tokens_for(shape.vocab_size)) * shape.vocab_size * 8


def _activation_bytes_per_token(shape: ModelShape, s: PlanSettings, targets: list[LinearLayer],
                                act: int) -> float:
    """Bytes autograd keeps per token in one decoder layer (Llama-style block, packed rows).

    Norms compute in fp32: they keep their input and, when their weight trains, the normalised value
    and output too. Attention keeps the rotated queries, keys and values repeated to every head (packed
    rows carry a block mask, so GQA is expanded) and its output. A frozen linear layer keeps nothing;
    a trained one keeps its input. LoRA adapters (fp32) keep their own dropped-out fp32 copy of the
    input plus a 1-byte mask, and the rank-r intermediate.
    """
    h, i = shape.hidden_size, shape.intermediate_size
    q = shape.num_heads * shape.head_dim
    attention = 4 * q * act
    if s.method == "full":  # + o_proj input, and gate, act(gate), up and their product for down_proj
        return 2 * 12 * h + attention + q * act + 4 * i * act
    per_layer = len(targets) / shape.num_layers
    total: float = 2 * 4 * h + attention + 3 * i * act
    if s.lora_dropout > 0:
        total += sum(x.in_features for x in targets) / shape.num_layers * (4 + 1)
    elif act == 4:  # fp32 model: adapters share the tensor the base layer reads
        groups = {(x.name.rsplit(".", 1)[0], x.in_features, x.name.rsplit(".", 1)[-1] in _OUTPUT_PROJ)
                  for x in targets}
        total += sum(g[1] for g in groups) / shape.num_layers * 4
    else:  # each adapter casts its input to fp32
        total += sum(x.in_features for x in targets) / shape.num_layers * 4
    return total + per_layer * s.lora_r * 4


def make_plan(shape: ModelShape, s: PlanSettings, *, capacity_bytes: int | None, capacity_label: str,
              suggest: bool = True) -> MemoryPlan:
    """The plan for ``s``; when it does not fit, the cumulative changes that would make it fit."""
    trainable, components = estimate(shape, s)
    notes: tuple[str, ...] = ()
    if s.method == "full" and shape.total_params > FULL_FT_MAX_PARAMS:
        notes = (f"mode='full' is refused above {FULL_FT_MAX_PARAMS / 1e9:.1f} B parameters "
                 "(RUNTIME_FULL_FT_MODEL_TOO_LARGE); use LoRA/QLoRA or a sub-4 B preset.",)
    plan = MemoryPlan(shape.name, shape.total_params, s, trainable, components, capacity_bytes, capacity_label,
                      notes=notes)
    if not suggest or plan.fits is not False:
        return plan
    return replace(plan, suggestions=tuple(_suggestions(shape, s, capacity_bytes or 0)))


def _suggestions(shape: ModelShape, s: PlanSettings, capacity: int) -> list[Suggestion]:
    steps: list[tuple[str, dict[str, Any]]] = []
    if not s.gradient_checkpointing:
        steps.append(("gradient_checkpointing=True", {"gradient_checkpointing": True}))
    if s.batch_size > 1:
        steps.append(("batch_size=1 (raise gradient_accumulation)", {"batch_size": 1}))
    if s.method == "full":
        steps.append(("mode='lora' (LoRA adapter)", {"method": "lora"}))
    if s.device == "cuda" and "8bit" not in s.optim:
        steps.append(("optim='paged_adamw_8bit'", {"optim": "paged_adamw_8bit"}))
    if s.method in ("lora", "dora", "full") and s.device == "cuda":
        steps.append(("load_in_4bit=True (QLoRA)", {"method": "qlora"}))
    if s.lora_r > 16 or s.target_modules == "all-linear":
        steps.append(("lora_preset='fast' (r=16 on q_proj,v_proj)",
                      {"lora_r": 16, "target_modules": ("q_proj", "v_proj")}))
    seq = s.seq_len
    while seq > 512:
        seq //= 2
        steps.append((f"max_seq_length={seq}", {"seq_len": seq}))
    out, current = [], s
    for label, change in steps:
        current = replace(current, **change)
        total = sum(estimate(shape, current)[1].values())
        out.append(Suggestion(label, total, total <= capacity))
        if total <= capacity:
            break
    return out
