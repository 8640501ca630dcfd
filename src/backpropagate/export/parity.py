"""The parity check: does the GGUF, run by llama.cpp, behave like the PyTorch model it came from?

On a fixed set of prompts (plain text, and conversations rendered through the chat template) it checks
(a) llama.cpp tokenizes exactly like the Hugging Face tokenizer, (b) the chat template stored in the GGUF,
rendered the way llama-cpp-python renders it, gives the same text as ``apply_chat_template``, (c) every
end-of-turn/stop token is an end-of-generation token for llama.cpp, and (d) the next-token distributions
agree with PyTorch's at every position: top-1 agreement and KL divergence (reported like llama.cpp's
``perplexity --kl-divergence``), plus short greedy generations from both (reported).

How (d) is judged depends on the type, because quantization legitimately moves logits and a fixed top-1
threshold cannot tell rounding from a fault: f32/f16/bf16 need >= 99 % top-1 agreement
(:data:`.quantize.AGREEMENT_THRESHOLDS`). A quantized file is judged against files of the same weights
(:class:`References`): the f16/bf16 GGUF must pass that strict check, a type the writer quantizes itself
(q8_0) must come as close to PyTorch as llama.cpp's own quantizer's file of that type (mean KLD and top-1,
within :data:`.quantize.KL_TOLERANCE` / :data:`.quantize.TOP1_TOLERANCE`), and every quantized type stays
under a sanity ceiling on its mean KLD: a share (:data:`.quantize.MAX_KLD_SHARE`) of what a uniform guess
loses on the same positions, so one rule fits models of any size and vocabulary.

A Metaspace "first" tokenizer (transformers 5's Mistral v0.3; see :mod:`.gguf_vocab_kind`) puts "▁" before
the text that starts the input and llama.cpp cannot: its plain prompts pass (a) when llama.cpp's ids are the
tokenizer's own ids of the same text after a special token, and the report names that difference in
``known_differences``.
``verify_gguf(conversations=...)`` checks other conversations, e.g. :data:`TOOL_CONVERSATION` (tool calls).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..data.chat_template import template_traits
from .gguf_tokenizer import loaded_layout, stop_tokens
from .gguf_vocab_kind import tokenizer_kind

if TYPE_CHECKING:
    from llama_cpp.llama_types import ChatCompletionRequestMessage
from .kl import Divergence, KLStats, kl_from_uniform, nats, paired_margin
from .quantize import AGREEMENT_THRESHOLDS, KL_TOLERANCE, MAX_KLD_SHARE, TOP1_TOLERANCE, require_llama_cpp

PLAIN_PROMPTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog. What is the capital of France?",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # 5",
    "Prices rose by 3.5% in 2024: café, naïve, “quotes” and an emoji 🙂.",
)
CONVERSATIONS: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "user", "content": "What is the capital of France?"},),
    ({"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Hi there, I have a question about my order."},
     {"role": "assistant", "content": "Sure, I can help with that. What is the order number?"},
     {"role": "user", "content": "It is 12345. When will it arrive?"}),
    ({"role": "user", "content": "Can you give me three tips for better sleep?"},
     {"role": "assistant", "content": "1. Go to bed at the same time every night.\n2. Avoid screens before bed."},
     {"role": "user", "content": "Thanks! And one more?"}),
)


@dataclass(frozen=True)
class ChatPrompt:
    """A conversation rendered through the chat template, with the ``tools`` the template is given (if any)."""

    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...] | None = None


TOOLS: tuple[dict[str, Any], ...] = ({"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city name."}},
                   "required": ["city"]}}},)
# OpenAI-style tool use: arguments as an object, a 9-character alphanumeric call id (what Mistral requires).
TOOL_CONVERSATION = ChatPrompt((
    {"role": "user", "content": "What is the weather in Paris right now?"},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "a1B2c3D4e", "type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "tool_call_id": "a1B2c3D4e", "content": '{"temperature": 22, "sky": "sunny"}'},
    {"role": "assistant", "content": "It is 22 degrees and sunny in Paris."},
    {"role": "user", "content": "Thanks! And in Lyon?"}), TOOLS)
START_PREFIX_NOTE = ("plain text that starts the input without a space: the tokenizer (Metaspace, prepend_scheme "
                     "'first') puts '▁' before its first word and llama.cpp (add_space_prefix false) does not; "
                     "text after a special token, as in every chat, is tokenized alike")
GENERATION_TOKENS = 16
SMALL_MODEL_BYTES = 256 * 2**20


@dataclass(frozen=True)
class References:
    """Files of the same weights a quantized GGUF is judged against (made by the export, see module doc)."""

    full: Path | None = None  # the f16/bf16 GGUF the quantized file was (or could have been) made from
    full_type: str = "f16"
    quantized: Path | None = None  # llama.cpp's quantizer's file of the same type, for types we write


@dataclass
class ParityReport:
    """The outcome of :func:`verify_gguf`; ``to_dict`` is what export_report.json holds."""

    gguf: str
    quantization: str
    reference: str
    adapter: str | None = None
    loaded: bool = True
    tokenization: list[dict[str, Any]] = field(default_factory=list)
    chat_template: list[dict[str, Any]] = field(default_factory=list)
    stop_tokens: dict[str, bool] = field(default_factory=dict)
    eos_matches: bool = True
    positions: int = 0
    agreement: float = 0.0
    max_logit_diff: float = 0.0
    threshold: float | None = None  # the minimum top-1 agreement applied; None: reported only
    kl: dict[str, Any] = field(default_factory=dict)  # KLStats of KL(PyTorch || GGUF), in nats
    kl_limit: float | None = None  # the maximum mean KLD applied
    kl_uniform: float = 0.0  # PyTorch's mean KLD from a uniform guess on the same positions: the KL scale
    rules: dict[str, str] = field(default_factory=dict)  # how each limit was set, for people
    references: list[dict[str, Any]] = field(default_factory=list)  # the files compared with, and their scores
    generation: dict[str, Any] = field(default_factory=dict)
    # what llama.cpp does differently by design and the checks allow (not failures), for people
    known_differences: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def table(self) -> str:
        """A small human-readable summary (the CLI prints it)."""
        tok_ok = sum(t["match"] for t in self.tokenization)
        start_only = sum(bool(t.get("start_prefix")) for t in self.tokenization)
        tpl = [t for t in self.chat_template if t["match"] is not None]
        tpl_ok = sum(t["match"] for t in tpl)
        stops = ", ".join(f"{k} {'ok' if v else 'NOT EOG'}" for k, v in self.stop_tokens.items())
        kl = KLStats(**self.kl) if self.kl else None
        rows = [
            ("check", "result", "required"),
            ("token ids (HF vs GGUF)", f"{tok_ok}/{len(self.tokenization)} prompts equal"
             + (f", {start_only} differ only before the first word (see below)" if start_only else ""), "all"),
            ("chat template render", f"{tpl_ok}/{len(tpl)} conversations equal" if tpl else "no template", "all"),
            ("stop tokens", stops or "none", "all end-of-generation"),
            ("top-1 agreement", f"{self.agreement:.2%} ± {kl.same_top1_uncertainty:.2%} of {self.positions} "
             "positions" if kl else f"{self.agreement:.2%} of {self.positions} positions",
             self.rules.get("top-1", "reported only")),
            ("KL divergence", f"mean {nats(kl.mean)} ± {nats(kl.uncertainty)}, max {kl.maximum:.4g}, "
             f"99% {kl.p99:.4g}, median {kl.median:.4g}" if kl else "not measured",
             self.rules.get("kl", "reported only")),
            *((f"{r['role']} ({r['quantization']})", _reference_result(r), r.get("required", "reported"))
              for r in self.references),
            ("max |logit diff|", f"{self.max_logit_diff:.4g}", "reported"),
            ("greedy generation", ", ".join(
                f"{k} {'identical' if v.get('match') else 'differs'} ({len(v.get('gguf_tokens', []))} tokens)"
                for k, v in self.generation.items()) or "not run", "reported"),
        ]
        width = max(len(r[0]) for r in rows)
        middle = max(len(r[1]) for r in rows)
        lines = [f"{a:<{width}}  {b:<{middle}}  {c}" for a, b, c in rows]
        lines += [f"known difference: {n}" for n in self.known_differences]
        lines.append(f"parity: {'PASSED' if self.passed else 'FAILED'} ({self.quantization})")
        lines += [f"  - {f}" for f in self.failures]
        return "\n".join(lines)


def _reference_result(ref: dict[str, Any]) -> str:
    if "kl" not in ref:
        return ref.get("error", "not measured")
    return f"top-1 {ref['agreement']:.2%}, KLD {nats(ref['kl']['mean'])} ± {nats(ref['kl']['uncertainty'])}"


def _render_hf(tokenizer: Any, chat: ChatPrompt, generation: bool) -> str:
    tools = list(chat.tools) if chat.tools is not None else None
    return tokenizer.apply_chat_template(list(chat.messages), tools=tools, tokenize=False,
                                         add_generation_prompt=generation)


def _template_checks(llm: Any, tokenizer: Any, report: ParityReport, chats: list[ChatPrompt]) -> None:
    """(b): render every conversation with the GGUF's template the way llama-cpp-python does."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if not getattr(tokenizer, "chat_template", None):
        return
    if template is None:
        report.failures.append("the GGUF has no chat template although the model has one")
        return
    eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", "replace") if llm.token_eos() >= 0 else ""
    bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8", "replace") if llm.token_bos() >= 0 else ""
    for chat in chats:
        messages = list(chat.messages)
        expected = _render_hf(tokenizer, chat, True)
        try:
            got = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, add_generation_prompt=True)(
                messages=cast("list[ChatCompletionRequestMessage]", messages),  # role/content dicts
                tools=cast("Any", list(chat.tools) if chat.tools is not None else None)).prompt
        except Exception as exc:  # noqa: BLE001 - a template llama-cpp-python cannot render is a failure
            got = f"<render error: {type(exc).__name__}: {exc}>"
        match = got == expected
        report.chat_template.append({"conversation": len(messages), "tools": chat.tools is not None, "match": match,
                                     **({} if match else {"hf": expected, "gguf": got})})
        if not match:
            report.failures.append(f"chat template renders differently for the {len(messages)}-message conversation")


def _render_plain(chat: ChatPrompt) -> str:
    return "\n".join(f"{m['role']}: {m.get('content') or m.get('tool_calls')}" for m in chat.messages)


def default_threads(path: Path) -> int:
    """One thread for small files: ggml's spinning worker threads cost more than they give on tiny models
    (60x slower on a busy 2-core machine); all cores otherwise."""
    return 1 if path.stat().st_size < SMALL_MODEL_BYTES else (os.cpu_count() or 1)


def _load_llama(path: Path, adapter: Path | None, n_ctx: int, threads: int | None) -> Any:
    llama_cpp = require_llama_cpp()
    threads = threads or default_threads(path)
    kwargs: dict[str, Any] = {"lora_path": str(adapter)} if adapter is not None else {}
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=True, verbose=False,  # type: ignore[attr-defined]
                           n_threads=threads, n_threads_batch=threads, seed=0, **kwargs)


def _greedy(step: Any, prompt: list[int], stops: set[int]) -> list[int]:
    """Greedy decoding; ``step(new_ids)`` feeds the ids not seen yet and returns the next token."""
    out: list[int] = []
    token = step(list(prompt))
    while token not in stops and len(out) < GENERATION_TOKENS:
        out.append(token)
        token = step([token])
    return out


def _chats(conversations: Sequence[ChatPrompt | tuple[dict[str, Any], ...]] | None) -> list[ChatPrompt]:
    chosen = CONVERSATIONS if conversations is None else conversations
    return [c if isinstance(c, ChatPrompt) else ChatPrompt(tuple(c)) for c in chosen]


def _prompts(tokenizer: Any, chats: list[ChatPrompt]) -> tuple[list[str], list[list[int]]]:
    """The plain prompts and the rendered conversations, and their Hugging Face token ids (BOS on plain)."""
    rendered = [_render_hf(tokenizer, c, True) if tokenizer.chat_template else _render_plain(c) for c in chats]
    ids = [list(tokenizer(t)["input_ids"]) for t in PLAIN_PROMPTS]
    ids += [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in rendered]
    return list(PLAIN_PROMPTS) + rendered, ids


def _start_prefix_only(reference_dir: Path, tokenizer: Any) -> bool:
    """Whether the tokenizer, as transformers runs it, is a Metaspace "first" one (see module doc)."""
    try:
        data = json.loads((reference_dir / "tokenizer.json").read_text(encoding="utf-8"))
        return tokenizer_kind(loaded_layout(data, tokenizer)).start_prefix_only
    except Exception:  # noqa: BLE001 - no or another tokenizer.json: the export itself refused or handled it
        return False


def _after_special(tokenizer: Any, text: str) -> list[int] | None:
    """The tokenizer's ids of ``text`` where it follows a special token (no "▁" before the first word under
    Metaspace "first"), with the special tokens plain text gets: what llama.cpp reproduces."""
    marker = tokenizer.bos_token or tokenizer.eos_token
    if not marker:
        return None
    after = list(tokenizer(marker + text, add_special_tokens=False)["input_ids"])[1:]
    empty = list(tokenizer("")["input_ids"])  # what the post-processor adds: [bos], [bos, eos], ...
    lead = empty[:1] if tokenizer.bos_token_id is not None and empty[:1] == [tokenizer.bos_token_id] else []
    return lead + after + empty[len(lead):]


def verify_gguf(gguf_path: str | Path, reference_dir: str | Path, quantization: str, *,
                adapter_path: str | Path | None = None, threads: int | None = None,
                references: References | None = None,
                conversations: Sequence[ChatPrompt | tuple[dict[str, Any], ...]] | None = None) -> ParityReport:
    """Compare the GGUF (optionally with a LoRA GGUF on top) with the Hugging Face model in ``reference_dir``
    on the plain prompts and ``conversations`` (default :data:`CONVERSATIONS`); a quantized GGUF is also
    compared with ``references`` (files of the same weights; see module doc)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, reference_dir = Path(gguf_path), Path(reference_dir)
    adapter = Path(adapter_path) if adapter_path is not None else None
    report = ParityReport(gguf=str(gguf_path), quantization=quantization, reference=str(reference_dir),
                          adapter=str(adapter) if adapter else None)
    tokenizer = AutoTokenizer.from_pretrained(reference_dir)
    chats = _chats(conversations)
    texts, hf_inputs = _prompts(tokenizer, chats)
    known = [_after_special(tokenizer, t) for t in PLAIN_PROMPTS] if _start_prefix_only(reference_dir, tokenizer) else []
    n_ctx = max(len(ids) for ids in hf_inputs) + GENERATION_TOKENS + 8
    try:
        llm = _load_llama(gguf_path, adapter, n_ctx, threads)
    except Exception as exc:  # noqa: BLE001 - any load failure is the verdict
        report.loaded = False
        report.failures.append(f"llama.cpp could not load the file: {exc}")
        return report
    try:
        _template_checks(llm, tokenizer, report, chats)
        _token_checks(llm, texts, hf_inputs, report, known)
        if conversations is None:
            _tool_checks(llm, tokenizer, report)
        _check_stops(llm, reference_dir, tokenizer, report)
        model = AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = [model(input_ids=torch.tensor([ids])).logits[0].float().numpy() for ids in hf_inputs]
        ours = _divergence(llm, hf_inputs, logits)
        report.kl_uniform = float(np.concatenate([kl_from_uniform(x) for x in logits]).mean())
        stops = set(report_stop_ids(report, tokenizer))
        report.generation = {"chat": _generation(llm, model, tokenizer, hf_inputs[len(PLAIN_PROMPTS)], stops),
                             # fixed length: a tuned model may end a plain text at once, proving nothing
                             "text": _generation(llm, model, tokenizer, hf_inputs[0], set())}
    finally:
        llm.close()
    measure = _measurer(adapter, n_ctx, threads, hf_inputs, logits)
    _judge(report, ours, references or References(), measure)
    return report


def _token_checks(llm: Any, texts: list[str], hf_inputs: list[list[int]], report: ParityReport,
                  known: list[list[int] | None]) -> None:
    """(a): llama.cpp's token ids of every prompt equal the Hugging Face tokenizer's; ``known[i]``: the ids plain
    prompt i may have instead (Metaspace "first", see module doc)."""
    for i, (text, expected) in enumerate(zip(texts, hf_inputs, strict=True)):
        is_chat = i >= len(PLAIN_PROMPTS)
        got = list(llm.tokenize(text.encode("utf-8"), add_bos=not is_chat, special=is_chat))
        match = got == expected
        start_prefix = not match and not is_chat and i < len(known) and got == known[i]
        report.tokenization.append({"prompt": i, "chat": is_chat, "tokens": len(expected), "match": match,
                                    **({"start_prefix": True} if start_prefix else {}),
                                    **({} if match else {"hf": expected[:64], "gguf": got[:64]})})
        if start_prefix and START_PREFIX_NOTE not in report.known_differences:
            report.known_differences.append(START_PREFIX_NOTE)
        elif not match and not start_prefix:
            report.failures.append(f"token ids differ for {'chat' if is_chat else 'plain'} prompt {i}")


def _tool_checks(llm: Any, tokenizer: Any, report: ParityReport) -> None:
    """Where the chat template writes tool calls itself: the GGUF's template renders :data:`TOOL_CONVERSATION`
    as transformers does and llama.cpp tokenizes that rendering into the same ids, so a model trained on tool
    calls is served in their format (its logits are judged on the other conversations)."""
    if not getattr(tokenizer, "chat_template", None) or not template_traits(tokenizer).tool_calls:
        return
    _template_checks(llm, tokenizer, report, [TOOL_CONVERSATION])
    text = _render_hf(tokenizer, TOOL_CONVERSATION, True)
    expected = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    got = list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
    match = got == expected
    report.tokenization.append({"prompt": "tools", "chat": True, "tokens": len(expected), "match": match,
                                **({} if match else {"hf": expected[:64], "gguf": got[:64]})})
    if not match:
        report.failures.append("token ids differ for the tool conversation")


def _divergence(llm: Any, inputs: list[list[int]], logits: list[Any]) -> Divergence:
    """(d): llama.cpp's logits at every position of every prompt against PyTorch's."""
    import numpy as np

    result = Divergence.empty()
    for ids, reference in zip(inputs, logits, strict=True):
        llm.reset()
        llm.eval(ids)
        result.add(reference, np.asarray(llm.scores[: len(ids)], dtype=np.float32))
    return result


def _measurer(adapter: Path | None, n_ctx: int, threads: int | None, inputs: list[list[int]],
              logits: list[Any]) -> Any:
    """``measure(path)``: another GGUF's divergence from PyTorch on the same positions, or the load error."""
    def measure(path: Path) -> Divergence | str:
        try:
            llm = _load_llama(path, adapter, n_ctx, threads)
        except Exception as exc:  # noqa: BLE001 - reported as the reason the comparison is missing
            return f"llama.cpp could not load {path.name}: {exc}"
        try:
            return _divergence(llm, inputs, logits)
        finally:
            llm.close()
    return measure


def _scores(result: Divergence) -> dict[str, Any]:
    return {"agreement": result.agreement, "max_logit_diff": result.max_logit_diff,
            "kl": result.stats().to_dict()}


def _judge(report: ParityReport, ours: Divergence, refs: References, measure: Any) -> None:
    """(d)'s verdict, by the rules in the module doc; ``measure(path)`` scores a reference file."""
    q = report.quantization
    report.positions, report.agreement, report.max_logit_diff = len(ours.kl), ours.agreement, ours.max_logit_diff
    report.kl = ours.stats().to_dict()
    if q in AGREEMENT_THRESHOLDS:
        report.threshold = AGREEMENT_THRESHOLDS[q]
        report.rules["top-1"] = f">= {report.threshold:.0%}"
    else:
        if refs.full is not None:
            _judge_full(report, refs.full, refs.full_type, measure(refs.full))
        if refs.quantized is not None:
            _judge_against_llama_cpp(report, ours, refs.quantized.name, measure(refs.quantized))
        ceiling = MAX_KLD_SHARE * report.kl_uniform
        if report.kl_limit is None or ceiling < report.kl_limit:
            report.kl_limit = ceiling
            report.rules["kl"] = (f"<= {nats(ceiling)} (sanity ceiling: {MAX_KLD_SHARE:g} x {nats(report.kl_uniform)}, "
                                  "what a uniform guess loses)")
    if report.threshold is not None and report.agreement < report.threshold:
        report.failures.append(f"top-1 agreement {report.agreement:.2%} is not {report.rules['top-1']}")
    if report.kl_limit is not None and report.kl["mean"] > report.kl_limit:
        report.failures.append(f"mean KL divergence {nats(report.kl['mean'])} is not {report.rules['kl']}")


def _judge_full(report: ParityReport, path: Path, full_type: str, result: Divergence | str) -> None:
    """The unquantized file of the same weights must pass the strict check, or the conversion is at fault."""
    threshold = AGREEMENT_THRESHOLDS[full_type]
    entry: dict[str, Any] = {"role": "same weights unquantized", "quantization": full_type,
                             "gguf": path.name, "required": f"top-1 >= {threshold:.0%}"}
    report.references.append(entry)
    if isinstance(result, str):
        entry["error"] = result
        report.failures.append(result)
        return
    entry.update(_scores(result))
    if result.agreement < threshold:
        report.failures.append(f"the {full_type} GGUF of the same weights agrees with PyTorch at only "
                               f"{result.agreement:.2%} of positions (< {threshold:.0%}): the conversion, not "
                               "the quantization, is at fault")


def _judge_against_llama_cpp(report: ParityReport, ours: Divergence, name: str, result: Divergence | str) -> None:
    """Set the limits from llama.cpp's own file of the same type: ours must be about as close to PyTorch."""
    q = report.quantization
    entry: dict[str, Any] = {"role": "llama.cpp's quantizer", "quantization": q, "gguf": name,
                             "required": "sets the limits"}
    report.references.append(entry)
    if isinstance(result, str):
        entry["error"] = result
        report.failures.append(result)
        return
    entry.update(_scores(result))
    base_kl = float(result.kl.mean())
    kl_margin = paired_margin(ours.kl, result.kl)
    top_margin = max(TOP1_TOLERANCE, paired_margin(ours.same_top1, result.same_top1))
    report.kl_limit = base_kl * (1 + KL_TOLERANCE) + kl_margin
    report.threshold = max(0.0, result.agreement - top_margin)
    report.rules["kl"] = (f"<= {nats(report.kl_limit)} (llama.cpp's {q} of the same weights: {nats(base_kl)} "
                          f"x {1 + KL_TOLERANCE:g} + {nats(kl_margin)}, two standard errors of the paired difference)")
    report.rules["top-1"] = (f">= {report.threshold:.2%} (llama.cpp's {q} of the same weights: "
                             f"{result.agreement:.2%} - {top_margin:.2%})")


def report_stop_ids(report: ParityReport, tokenizer: Any) -> list[int]:
    return [int(tokenizer.convert_tokens_to_ids(t)) for t in report.stop_tokens]


def _check_stops(llm: Any, reference_dir: Path, tokenizer: Any, report: ParityReport) -> None:
    """(c): every stop token must end generation in llama.cpp, and eos must be the same token."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    for token, token_id in stop_tokens(reference_dir, tokenizer).items():
        is_eog = bool(llama_cpp.llama_vocab_is_eog(vocab, token_id))
        report.stop_tokens[token] = is_eog
        if not is_eog:
            report.failures.append(f"{token!r} does not end generation in llama.cpp")
    if tokenizer.eos_token_id is not None and llm.token_eos() != tokenizer.eos_token_id:
        report.eos_matches = False
        report.failures.append(f"eos is token {llm.token_eos()} in the GGUF but {tokenizer.eos_token_id} in HF")


def _generation(llm: Any, model: Any, tokenizer: Any, prompt: list[int], stops: set[int]) -> dict[str, Any]:
    """Greedy continuation of ``prompt`` by both; reported, not a gate (near-ties may flip)."""
    import inspect

    import numpy as np
    import torch

    llm.reset()
    # transformers renamed past_key_values to cache (5.2x); use whichever this version's forward takes
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache: dict[str, Any] = {key: None}

    def gguf_step(new: list[int]) -> int:  # llama.cpp keeps its KV cache between calls
        llm.eval(new)
        return int(np.argmax(llm.scores[llm.n_tokens - 1]))

    def hf_step(new: list[int]) -> int:  # PyTorch too, as generate() does (a 262k vocabulary makes no-cache slow)
        with torch.no_grad():
            out = model(input_ids=torch.tensor([new]), use_cache=True, **cache)
        cache[key] = out[key]
        return int(out.logits[0, -1].argmax())

    gguf_ids = _greedy(gguf_step, prompt, stops)
    hf_ids = _greedy(hf_step, prompt, stops)
    return {"gguf_tokens": gguf_ids, "hf_tokens": hf_ids, "match": gguf_ids == hf_ids,
            "gguf_text": tokenizer.decode(gguf_ids, skip_special_tokens=True),
            "hf_text": tokenizer.decode(hf_ids, skip_special_tokens=True)}
