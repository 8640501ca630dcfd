"""Greedy answers of a loaded model, with or without its adapter: ``Trainer.chat`` and before/after samples.

Before/after answers show what a run changed: the base model (adapter switched off) answers each sample
prompt before the first step, the tuned model after the last. Greedy and short, so they are reproducible
and cheap enough to run on every run that asks for them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from ..data.templates import end_of_turn_tokens
from ..errors import BackpropagateError

SAMPLE_MAX_NEW_TOKENS = 32  # short: a sample shows the change, it is not an evaluation


def has_adapter(model: Any) -> bool:
    """Whether the model carries a peft adapter that can be switched off (not so for full fine-tuning)."""
    return callable(getattr(model, "disable_adapter", None))


@contextmanager
def adapter_switched(model: Any, enabled: bool) -> Iterator[None]:
    """The adapter on (as trained) or off (the base model); off needs an adapter (STATE_NO_ADAPTER)."""
    if enabled:
        yield
        return
    if not has_adapter(model):
        raise BackpropagateError("STATE_NO_ADAPTER", "full fine-tuning (mode=\"full\") has no adapter to switch "
                                 "off: training changed the model's own weights.",
                                 hint="Ask a second Trainer(model) (untrained, it answers with the base model), "
                                      "or use sample_prompts, whose 'before' answers come from the base weights.")
    with model.disable_adapter():
        yield


def greedy_answer(model: Any, tokenizer: Any, prompt: str, *, max_new_tokens: int, system: str | None = None,
                  adapter: bool = True) -> str:
    """The model's greedy reply to one user message, rendered with its chat template."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return generate_reply(model, tokenizer, messages, max_new_tokens=max_new_tokens, adapter=adapter)


def generate_reply(model: Any, tokenizer: Any, messages: Sequence[dict[str, str]], *, max_new_tokens: int,
                   adapter: bool = True, temperature: float = 0.0,
                   on_text: Callable[[str], Any] | None = None) -> str:
    """The model's reply to a conversation, rendered with its chat template; greedy at ``temperature`` 0.

    ``on_text`` receives the reply as it is generated (whole words, as transformers' TextStreamer cuts it).
    Eval mode while it generates (no dropout); the model's train/eval mode is restored after. The model's
    own generation config is kept (e.g. a repetition penalty) but its sampling settings are not: they are
    this call's.
    """
    import torch

    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    device = next(model.parameters()).device
    training = model.training
    model.eval()
    try:
        with adapter_switched(model, adapter), torch.no_grad():
            out = model.generate(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                                 generation_config=_generation_config(model, tokenizer, max_new_tokens, temperature),
                                 streamer=_streamer(tokenizer, on_text))
    finally:
        model.train(training)
    return str(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())


def _generation_config(model: Any, tokenizer: Any, max_new_tokens: int, temperature: float) -> Any:
    """The model's generation config with this call's length, sampling and end-of-turn stops."""
    config = copy.deepcopy(model.generation_config)
    sampled = temperature > 0
    config.update(max_new_tokens=max_new_tokens, do_sample=sampled, temperature=temperature if sampled else None,
                  top_p=config.top_p if sampled else None, top_k=config.top_k if sampled else None,
                  eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in end_of_turn_tokens(tokenizer)],
                  pad_token_id=tokenizer.pad_token_id, use_cache=True)
    return config


def _streamer(tokenizer: Any, on_text: Callable[[str], Any] | None) -> Any:
    """transformers' TextStreamer (the reply only, no special tokens) handing its text to ``on_text``."""
    if on_text is None:
        return None
    from transformers import TextStreamer

    emit = on_text

    class _ToCallback(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                emit(text)

    return _ToCallback(tokenizer, skip_prompt=True, skip_special_tokens=True)


def check_sample_prompts(prompts: Any) -> list[str]:
    """The prompts as a list of non-blank strings, checked before any model loads (INPUT_INVALID_VALUE)."""
    if prompts is None:
        return []
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or \
            not all(isinstance(p, str) and p.strip() for p in prompts):
        raise BackpropagateError("INPUT_INVALID_VALUE", f"sample_prompts must be a list of non-empty strings, "
                                 f"got {prompts!r:.80}.", hint='e.g. sample_prompts=["What is Python?"]')
    return list(prompts)


@dataclass
class SampleAnswers:
    """The sample prompts of one run, the base model's answers before its first step, and the adapter's at
    each evaluation (``on_evaluate``) of this process; the after answers come at the end."""

    prompts: list[str]
    before: list[str] = field(default_factory=list)
    during: list[tuple[int, list[str]]] = field(default_factory=list)

    @classmethod
    def before_training(cls, model: Any, tokenizer: Any, prompts: list[str]) -> SampleAnswers:
        """Answers of the base model: adapter off, or with full fine-tuning the weights as loaded (no step
        has run yet; a resumed run restores its checkpoint later, inside the loop)."""
        base = not has_adapter(model)
        return cls(prompts, [greedy_answer(model, tokenizer, p, max_new_tokens=SAMPLE_MAX_NEW_TOKENS, adapter=base)
                             for p in prompts])

    def _answer_all(self, model: Any, tokenizer: Any) -> list[str]:
        return [greedy_answer(model, tokenizer, p, max_new_tokens=SAMPLE_MAX_NEW_TOKENS) for p in self.prompts]

    def at_evaluations(self, callback: Any, model: Any, tokenizer: Any) -> Any:
        """``callback`` whose ``on_evaluate`` first answers the prompts with the model as it is at that step
        (greedy, no dropout, no RNG drawn: the training that follows is unchanged)."""
        if not self.prompts:
            return callback
        inner = callback.on_evaluate

        def on_evaluate(step: int, metrics: dict[str, float]) -> None:
            self.during.append((step, self._answer_all(model, tokenizer)))
            if inner is not None:
                inner(step, metrics)

        return replace(callback, on_evaluate=on_evaluate)

    def after_training(self, model: Any, tokenizer: Any) -> list[dict[str, Any]]:
        """One {prompt, before, after} per prompt (plus ``evaluations``: [{step, answer}] when the run
        evaluated); after: the tuned model's answer."""
        items: list[dict[str, Any]] = []
        for i, (prompt, before, after) in enumerate(zip(self.prompts, self.before,
                                                        self._answer_all(model, tokenizer), strict=True)):
            item: dict[str, Any] = {"prompt": prompt, "before": before, "after": after}
            if self.during:
                item["evaluations"] = [{"step": step, "answer": answers[i]} for step, answers in self.during]
            items.append(item)
        return items


def prompts_from_examples(examples: Sequence[Any], limit: int = 2) -> list[str]:
    """Up to ``limit`` first user turns of held-out conversations: the default sample prompts when a run
    holds rows out (raw-text rows have no user turn and are skipped)."""
    prompts: list[str] = []
    for example in examples:
        user = next((m.get("content") for m in getattr(example, "messages", ()) if m.get("role") == "user"), None)
        if isinstance(user, str) and user.strip() and user not in prompts:
            prompts.append(user)
        if len(prompts) == limit:
            break
    return prompts


def answers_text(answers: Sequence[dict[str, Any]]) -> str:
    """The before/after block of ``show-run`` and the end-of-run summary."""
    lines = []
    for item in answers:
        lines += [f"prompt: {item['prompt']}", f"  before: {item['before']}"]
        lines += [f"  step {e['step']}: {e['answer']}" for e in item.get("evaluations", [])]
        lines.append(f"  after:  {item['after']}")
    return "\n".join(lines)


def sample_answers_before(model: Any, tokenizer: Any, prompts: list[str], *, held_out: Any = None,
                          distributed: bool, log: Any) -> SampleAnswers:
    """The run's before answers to ``prompts``, else to up to 2 held-out rows' user turns (none without a
    hold-out: runs stay fast); a multi-process run skips them (each rank holds a wrapped or sharded model)."""
    if not prompts and held_out is not None and held_out.enabled:
        prompts = prompts_from_examples(held_out.eval_examples)
    if prompts and distributed:
        log.warning("sample_answers_skipped", reason="before/after answers need a single-process run")
        prompts = []
    answers = SampleAnswers.before_training(model, tokenizer, prompts)
    if prompts:
        log.info("sample_answers_before", prompts=len(prompts), max_new_tokens=SAMPLE_MAX_NEW_TOKENS)
    return answers
