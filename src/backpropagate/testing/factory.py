"""Build tiny, offline, deterministic checkpoints of real model families for tests.

Tests must not download models, yet they should exercise the same code paths as real checkpoints:
the real ``model_type`` and config class, the family's special tokens and chat template, GQA,
tied or untied embeddings, an embedding larger than the tokenizer. ``build_tiny_model`` writes
such a folder in well under a second, byte-identical for the same ``(family, size, seed)``.

Token conventions (see ``FAMILY_SPECS``): ``eos_token`` is the family's tokenizer eos, while
``end_of_turn`` is what the chat template writes after every assistant message; they differ for
llama (<|end_of_text|> vs <|eot_id|>) and phi3 (<|endoftext|> vs <|end|>). bos (llama, mistral) is
added by the tokenizer.json post-processor, exactly like Llama 3, *and* written by the chat template
as ``{{ bos_token }}``; transformers' ``apply_chat_template(tokenize=True)`` encodes without special
tokens, so bos appears once, but ``tokenizer(rendered_text)`` would add a second one, as on the real
models. ``tokenizer.add_bos_token`` reads False after a reload (transformers 5 does not save it);
check ``tokenizer("x").input_ids[0] == tokenizer.bos_token_id`` instead.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backpropagate.errors import BackpropagateError, invalid_value
from backpropagate.testing.corpus import corpus
from backpropagate.testing.templates import chat_template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

FAMILIES: tuple[str, ...] = ("llama", "qwen2", "mistral", "phi3", "qwen3", "smollm3")

#: Rows of every embedding matrix (and ``config.vocab_size``): a multiple of 64, >= len(tokenizer).
VOCAB_SIZE = 1024
#: Byte-level BPE tokens (256 bytes + merges) before the family's special/added tokens.
BPE_VOCAB_SIZE = 1000
#: Bump whenever the files written for the same arguments change, so stale caches are rebuilt.
FACTORY_VERSION = 1
#: Written last into every built folder; a folder without it is a half-built one.
MARKER_FILE = "backpropagate_tiny.json"
CACHE_ENV = "BACKPROPAGATE_TINY_CACHE"
MAX_POSITIONS = 2048
INIT_STD = 0.02


@dataclass(frozen=True)
class SizeSpec:
    """Shape of one size preset."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# "small" keeps every weight row width (hidden 256, intermediate 512) a multiple of 256, the
# K-quant super-block size, so the GGUF export can quantize it to Q4_K/Q6_K.
SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec(64, 128, 2, 4, 2),
    "small": SizeSpec(256, 512, 4, 4, 2),
}


@dataclass(frozen=True)
class FamilySpec:
    """Tokens and config choices that make a tiny model look like its real family."""

    family: str
    leading_specials: tuple[str, ...]  # special tokens at ids 0.. (before the BPE vocab)
    trailing_specials: tuple[str, ...]  # special tokens appended after the BPE vocab
    added_tokens: tuple[str, ...]  # added tokens that are *not* special (kept by skip_special_tokens)
    bos: str | None
    eos: str
    pad: str | None
    unk: str | None
    end_of_turn: str  # written right after every assistant message by the chat template
    stop_tokens: tuple[str, ...]  # generation_config.eos_token_id
    tie_word_embeddings: bool
    rope_theta: float
    rms_norm_eps: float
    pretokenizer: str = "gpt2"  # "gpt2" (ByteLevel's own regex), "llama3" or "qwen" (+ NFC), as upstream

    @property
    def add_bos(self) -> bool:
        """Whether ``tokenizer(text)`` prepends bos (the chat template then emits bos itself)."""
        return self.bos is not None


_LLAMA_SPECIALS: tuple[str, ...] = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
)
# Like Llama 3, reserved specials fill the tokenizer up to exactly the embedding size.
_LLAMA_SPECIALS += tuple(
    f"<|reserved_special_token_{i}|>" for i in range(3, 3 + VOCAB_SIZE - BPE_VOCAB_SIZE - len(_LLAMA_SPECIALS))
)
# Split patterns of the Llama 3 and Qwen2/Qwen3 tokenizer.json files (they differ in digit runs).
_SPLIT_PATTERNS = {
    "llama3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+",
}
_CHATML = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

FAMILY_SPECS: dict[str, FamilySpec] = {
    "llama": FamilySpec(
        "llama", (), _LLAMA_SPECIALS, (), bos="<|begin_of_text|>", eos="<|end_of_text|>",
        pad="<|finetune_right_pad_id|>", unk=None, end_of_turn="<|eot_id|>",
        stop_tokens=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"), tie_word_embeddings=True,
        rope_theta=500000.0, rms_norm_eps=1e-5, pretokenizer="llama3"),
    "qwen2": FamilySpec(
        "qwen2", (), _CHATML, ("<tool_call>", "</tool_call>"), bos=None, eos="<|im_end|>",
        pad="<|endoftext|>", unk=None, end_of_turn="<|im_end|>",
        stop_tokens=("<|im_end|>", "<|endoftext|>"), tie_word_embeddings=True,
        rope_theta=1000000.0, rms_norm_eps=1e-6, pretokenizer="qwen"),
    "mistral": FamilySpec(
        "mistral",
        ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
         "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"),
        (), (), bos="<s>", eos="</s>", pad=None, unk="<unk>", end_of_turn="</s>",
        stop_tokens=("</s>",), tie_word_embeddings=False, rope_theta=1000000.0, rms_norm_eps=1e-5),
    "phi3": FamilySpec(
        "phi3", (),
        ("<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>", "<|tool|>", "<|/tool|>",
         "<|tool_call|>", "<|/tool_call|>", "<|tool_response|>"),
        (), bos=None, eos="<|endoftext|>", pad="<|endoftext|>", unk=None, end_of_turn="<|end|>",
        stop_tokens=("<|endoftext|>", "<|end|>"), tie_word_embeddings=False,
        rope_theta=10000.0, rms_norm_eps=1e-5),
    "qwen3": FamilySpec(
        "qwen3", (), _CHATML,
        ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"),
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None, end_of_turn="<|im_end|>",
        stop_tokens=("<|im_end|>", "<|endoftext|>"), tie_word_embeddings=True,
        rope_theta=1000000.0, rms_norm_eps=1e-6, pretokenizer="qwen"),
    "smollm3": FamilySpec(
        "smollm3", (), ("<|im_start|>", "<|im_end|>", "<|endoftext|>"), ("<think>", "</think>"),
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None, end_of_turn="<|im_end|>",
        stop_tokens=("<|im_end|>",), tie_word_embeddings=True, rope_theta=5000000.0,
        rms_norm_eps=1e-6, pretokenizer="llama3"),
}


def _check_choice(name: str, value: object, choices: tuple[str, ...] | list[str]) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise invalid_value(name, value, "one of " + ", ".join(choices))
    return value.lower()


def family_spec(family: str) -> FamilySpec:
    """The token layout of ``family``; INPUT_INVALID_VALUE for unknown families."""
    return FAMILY_SPECS[_check_choice("family", family, FAMILIES)]


def build_tiny_tokenizer(family: str = "llama") -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the family's specials and chat template (not saved).

    The BPE is trained on the built-in corpus, deterministically (tokenizers' trainer breaks ties
    by pair order), so every call gives the same vocabulary and merges.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    spec = family_spec(family)
    tok = Tokenizer(models.BPE())
    if spec.pretokenizer == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_SPLIT_PATTERNS[spec.pretokenizer]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if spec.pretokenizer == "qwen":
        # transformers 5 always loads model_type "qwen2" with Qwen2Tokenizer, which rebuilds this
        # exact pipeline (NFC + split); matching it keeps the saved and the reloaded tokenizer equal.
        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE + len(spec.leading_specials), min_frequency=1, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=list(spec.leading_specials))
    tok.train_from_iterator(corpus(), trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec.trailing_specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec.added_tokens])
    steps: list[Any] = [processors.ByteLevel(trim_offsets=False)]
    if spec.bos is not None:
        # bos is added by the post-processor stored in tokenizer.json, as in Llama 3: transformers 5
        # does not save `add_bos_token` in tokenizer_config.json, so this is what survives a reload.
        bos_id = tok.token_to_id(spec.bos)
        steps.append(processors.TemplateProcessing(
            single=f"{spec.bos}:0 $A:0", pair=f"{spec.bos}:0 $A:0 {spec.bos}:1 $B:1",
            special_tokens=[(spec.bos, bos_id)]))
    tok.post_processor = processors.Sequence(steps)
    if tok.get_vocab_size(with_added_tokens=True) > VOCAB_SIZE:  # pragma: no cover - layout bug
        raise RuntimeError(f"{family}: tokenizer has more than {VOCAB_SIZE} tokens")

    named = {"bos_token": spec.bos, "eos_token": spec.eos, "pad_token": spec.pad, "unk_token": spec.unk}
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, **{k: v for k, v in named.items() if v is not None},
        clean_up_tokenization_spaces=False, model_max_length=MAX_POSITIONS)
    hf.chat_template = chat_template(spec.family)
    return hf


def _model_config(spec: FamilySpec, size: SizeSpec, tokenizer: PreTrainedTokenizerFast) -> Any:
    import transformers

    class_name = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "mistral": "MistralConfig",
                  "phi3": "Phi3Config", "qwen3": "Qwen3Config", "smollm3": "SmolLM3Config"}[spec.family]
    config_class = getattr(transformers, class_name)
    kwargs: dict[str, Any] = dict(
        vocab_size=VOCAB_SIZE, hidden_size=size.hidden_size, intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers, num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_key_value_heads, max_position_embeddings=MAX_POSITIONS,
        initializer_range=INIT_STD, rms_norm_eps=spec.rms_norm_eps,
        tie_word_embeddings=spec.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if spec.family in ("llama", "mistral", "qwen3"):  # these configs default head_dim to 128
        kwargs["head_dim"] = size.head_dim
    if spec.family == "mistral":
        kwargs["sliding_window"] = None  # v0.3 has no sliding window
    if spec.family == "phi3":
        kwargs["original_max_position_embeddings"] = MAX_POSITIONS
    config = config_class(**kwargs)
    config.dtype = "float32"
    return config


def _init_weights(model: Any, seed: int) -> None:
    """Re-draw every parameter from a private generator: N(0, 0.02) matrices, unit norms, zero biases.

    A private ``torch.Generator`` keeps the result independent of transformers' own init order and
    leaves the caller's global RNG alone.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32) * INIT_STD)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)


def _marker(family: str, size: str, seed: int) -> dict[str, Any]:
    return {"factory_version": FACTORY_VERSION, "family": family, "size": size, "seed": seed,
            "vocab_size": VOCAB_SIZE}


def _is_complete(path: Path, marker: dict[str, Any]) -> bool:
    try:
        found = json.loads((path / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    needed = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    return found == marker and all((path / name).is_file() for name in needed)


def _write_null_specials(config_file: Path, spec: FamilySpec) -> None:
    """Record absent specials as null, as Qwen's own files do.

    transformers 5 omits None specials from tokenizer_config.json, and a model-specific class picked
    on load (Qwen2Tokenizer for model_type "qwen2") would then fill in its default unk/eos instead.
    """
    data = json.loads(config_file.read_text(encoding="utf-8"))
    for key in ("bos_token", "pad_token", "unk_token"):
        if getattr(spec, key.removesuffix("_token")) is None:
            data.setdefault(key, None)
    config_file.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                           encoding="utf-8")


def _write_model(path: Path, family: str, size: str, seed: int) -> None:
    """Write config, weights, generation config and tokenizer into the existing folder ``path``."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    spec = FAMILY_SPECS[family]
    tokenizer = build_tiny_tokenizer(family)
    config = _model_config(spec, SIZES[size], tokenizer)
    with torch.random.fork_rng(devices=[]):  # from_config draws its own init from the global RNG
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _init_weights(model, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in spec.stop_tokens])
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    _write_null_specials(path / "tokenizer_config.json", spec)
    (path / MARKER_FILE).write_text(json.dumps(_marker(family, size, seed), indent=2, sort_keys=True)
                                    + "\n", encoding="utf-8")


def default_cache_dir(family: str, size: str = "tiny", seed: int = 0) -> Path:
    """Where ``build_tiny_model`` caches a build when no ``output_dir`` is given."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "backpropagate" / "tiny"
    return base / f"{family}-{size}-{seed}"


def _build_cached(final: Path, family: str, size: str, seed: int) -> Path:
    """Build in a temp sibling folder and rename it into place, so a half build is never reused."""
    marker = _marker(family, size, seed)
    if _is_complete(final, marker):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex}.partial"
    tmp.mkdir()  # unlike mkdtemp (0700) this honours the umask, as the renamed cache folder should
    try:
        _write_model(tmp, family, size, seed)
        try:
            os.rename(tmp, final)
        except OSError:
            if _is_complete(final, marker):  # another process finished first
                return final
            stale = final.parent / f".{final.name}.stale-{uuid.uuid4().hex}"
            try:  # an old or broken build: move it aside, then retry once
                os.rename(final, stale)
                os.rename(tmp, final)
            except OSError:
                if not _is_complete(final, marker):
                    raise
            shutil.rmtree(stale, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_tiny_model(family: str = "llama", output_dir: str | Path | None = None,
                     *, size: str = "tiny", seed: int = 0) -> Path:
    """Build (or reuse from the cache) a tiny random checkpoint of ``family`` and return its folder.

    The folder loads with ``AutoModelForCausalLM`` / ``AutoTokenizer`` without remote code or a
    network. With ``output_dir=None`` the build is cached under ``$BACKPROPAGATE_TINY_CACHE`` (or
    ``~/.cache/backpropagate/tiny``) as ``<family>-<size>-<seed>``. An explicit ``output_dir`` may
    exist but must be empty (or hold this very build, which is then returned as is).
    """
    family = _check_choice("family", family, FAMILIES)
    size = _check_choice("size", size, tuple(SIZES))
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise invalid_value("seed", seed, "an integer in [0, 2**63)")
    try:
        if output_dir is None:
            return _build_cached(default_cache_dir(family, size, seed), family, size, seed)
        path = Path(output_dir).expanduser()
        if path.exists() and not path.is_dir():
            raise BackpropagateError("INPUT_OUTPUT_DIR_INVALID", f"output_dir {str(path)!r} is a file.")
        if path.is_dir() and any(path.iterdir()):
            if _is_complete(path, _marker(family, size, seed)):
                return path
            raise BackpropagateError("STATE_OUTPUT_EXISTS", f"output_dir {str(path)!r} is not empty.")
        path.mkdir(parents=True, exist_ok=True)
        _write_model(path, family, size, seed)
        return path
    except OSError as exc:
        raise BackpropagateError("STATE_WRITE_FAILED", f"could not write the tiny {family} model: {exc}") from exc
