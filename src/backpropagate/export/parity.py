"""The parity check: does the GGUF, run by llama.cpp, behave like the PyTorch model it came from?

On a fixed set of prompts (plain text, and conversations rendered through the chat template) it checks
(a) llama.cpp tokenizes exactly like the Hugging Face tokenizer, (b) the chat template stored in the GGUF,
rendered the way llama-cpp-python renders it, gives the same text as ``apply_chat_template``, (c) every
end-of-turn/stop token is an end-of-generation token for llama.cpp, and (d) the next-token top-1 choice
agrees with PyTorch at every position (with the largest logit difference), plus short greedy
generations from both (a chat reply up to its end-of-turn token, and a fixed-length text continuation). Thresholds for (d) are in :data:`.quantize.AGREEMENT_THRESHOLDS`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .gguf_tokenizer import stop_tokens
from .quantize import AGREEMENT_THRESHOLDS, require_llama_cpp

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
GENERATION_TOKENS = 16
SMALL_MODEL_BYTES = 256 * 2**20


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
    threshold: float | None = None
    generation: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def table(self) -> str:
        """A small human-readable summary (the CLI prints it)."""
        tok_ok = sum(t["match"] for t in self.tokenization)
        tpl = [t for t in self.chat_template if t["match"] is not None]
        tpl_ok = sum(t["match"] for t in tpl)
        stops = ", ".join(f"{k} {'ok' if v else 'NOT EOG'}" for k, v in self.stop_tokens.items())
        need = f">= {self.threshold:.0%}" if self.threshold is not None else "reported only"
        rows = [
            ("check", "result", "required"),
            ("token ids (HF vs GGUF)", f"{tok_ok}/{len(self.tokenization)} prompts equal", "all"),
            ("chat template render", f"{tpl_ok}/{len(tpl)} conversations equal" if tpl else "no template", "all"),
            ("stop tokens", stops or "none", "all end-of-generation"),
            ("top-1 agreement", f"{self.agreement:.2%} of {self.positions} positions", need),
            ("max |logit diff|", f"{self.max_logit_diff:.4g}", "reported"),
            ("greedy generation", ", ".join(
                f"{k} {'identical' if v.get('match') else 'differs'} ({len(v.get('gguf_tokens', []))} tokens)"
                for k, v in self.generation.items()) or "not run", "reported"),
        ]
        width = max(len(r[0]) for r in rows)
        middle = max(len(r[1]) for r in rows)
        lines = [f"{a:<{width}}  {b:<{middle}}  {c}" for a, b, c in rows]
        lines.append(f"parity: {'PASSED' if self.passed else 'FAILED'} ({self.quantization})")
        lines += [f"  - {f}" for f in self.failures]
        return "\n".join(lines)


def _render_hf(tokenizer: Any, messages: list[dict[str, str]], generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _template_checks(llm: Any, tokenizer: Any, report: ParityReport) -> None:
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
    for conversation in CONVERSATIONS:
        messages = list(conversation)
        expected = _render_hf(tokenizer, messages, True)
        try:
            got = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos,
                                      add_generation_prompt=True)(messages=messages).prompt
        except Exception as exc:  # noqa: BLE001 - a template llama-cpp-python cannot render is a failure
            got = f"<render error: {type(exc).__name__}: {exc}>"
        match = got == expected
        report.chat_template.append({"conversation": len(messages), "match": match,
                                     **({} if match else {"hf": expected, "gguf": got})})
        if not match:
            report.failures.append(f"chat template renders differently for the {len(messages)}-message conversation")


def _render_plain(conversation: tuple[dict[str, str], ...]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in conversation)


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


def verify_gguf(gguf_path: str | Path, reference_dir: str | Path, quantization: str, *,
                adapter_path: str | Path | None = None, threads: int | None = None) -> ParityReport:
    """Compare the GGUF (optionally with a LoRA GGUF on top) with the Hugging Face model in ``reference_dir``."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, reference_dir = Path(gguf_path), Path(reference_dir)
    adapter = Path(adapter_path) if adapter_path is not None else None
    report = ParityReport(gguf=str(gguf_path), quantization=quantization, reference=str(reference_dir),
                          adapter=str(adapter) if adapter else None,
                          threshold=AGREEMENT_THRESHOLDS.get(quantization))
    tokenizer = AutoTokenizer.from_pretrained(reference_dir)
    rendered = [_render_hf(tokenizer, list(c), True) if tokenizer.chat_template else _render_plain(c)
                for c in CONVERSATIONS]
    hf_inputs = [list(tokenizer(t)["input_ids"]) for t in PLAIN_PROMPTS]
    hf_inputs += [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in rendered]
    n_ctx = max(len(ids) for ids in hf_inputs) + GENERATION_TOKENS + 8
    try:
        llm = _load_llama(gguf_path, adapter, n_ctx, threads)
    except Exception as exc:  # noqa: BLE001 - any load failure is the verdict
        report.loaded = False
        report.failures.append(f"llama.cpp could not load the file: {exc}")
        return report
    try:
        _template_checks(llm, tokenizer, report)
        texts = list(PLAIN_PROMPTS) + rendered
        for i, (text, expected) in enumerate(zip(texts, hf_inputs, strict=True)):
            is_chat = i >= len(PLAIN_PROMPTS)
            got = llm.tokenize(text.encode("utf-8"), add_bos=not is_chat, special=is_chat)
            match = list(got) == expected
            report.tokenization.append({"prompt": i, "chat": is_chat, "tokens": len(expected), "match": match,
                                        **({} if match else {"hf": expected[:64], "gguf": list(got)[:64]})})
            if not match:
                report.failures.append(f"token ids differ for {'chat' if is_chat else 'plain'} prompt {i}")
        _check_stops(llm, reference_dir, tokenizer, report)
        model = AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32).eval()
        agree = total = 0
        max_diff = 0.0
        for ids in hf_inputs:
            with torch.no_grad():
                ref = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
            llm.reset()
            llm.eval(ids)
            got = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
            agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
            total += len(ids)
            max_diff = max(max_diff, float(np.abs(ref - got).max()))
        report.positions, report.agreement, report.max_logit_diff = total, agree / total, max_diff
        if report.threshold is not None and report.agreement < report.threshold:
            report.failures.append(f"top-1 agreement {report.agreement:.2%} is below {report.threshold:.0%}")
        stops = set(report_stop_ids(report, tokenizer))
        report.generation = {"chat": _generation(llm, model, tokenizer, hf_inputs[len(PLAIN_PROMPTS)], stops),
                             # fixed length: a tuned model may end a plain text at once, proving nothing
                             "text": _generation(llm, model, tokenizer, hf_inputs[0], set())}
    finally:
        llm.close()
    return report


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
    import numpy as np
    import torch

    llm.reset()
    seen: list[int] = []

    def gguf_step(new: list[int]) -> int:  # llama.cpp keeps its KV cache between calls
        llm.eval(new)
        return int(np.argmax(llm.scores[llm.n_tokens - 1]))

    def hf_step(new: list[int]) -> int:  # no cache: the whole sequence again (short and exact)
        seen.extend(new)
        with torch.no_grad():
            return int(model(input_ids=torch.tensor([seen])).logits[0, -1].argmax())

    gguf_ids = _greedy(gguf_step, prompt, stops)
    hf_ids = _greedy(hf_step, prompt, stops)
    return {"gguf_tokens": gguf_ids, "hf_tokens": hf_ids, "match": gguf_ids == hf_ids,
            "gguf_text": tokenizer.decode(gguf_ids, skip_special_tokens=True),
            "hf_text": tokenizer.decode(hf_ids, skip_special_tokens=True)}
