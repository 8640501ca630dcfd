"""A causal-LM loss that never holds the whole ``[tokens, vocab]`` logits tensor.

The plain loss asks the model for logits at every position, casts them to fp32 and takes the
cross-entropy: for a 151k vocabulary that is 0.6 MB per token, more than everything else a LoRA step
keeps. Here the decoder runs without its head, only label-bearing positions are kept, and the head,
the model's logit transform and the cross-entropy run on at most ``LOSS_CHUNK_TOKENS`` tokens at a
time. A plain linear head works each chunk's gradients out during the forward pass, so its logits are
freed at once and never recomputed; any other head (a trained, LoRA-wrapped one) runs each chunk under
non-reentrant checkpointing and recomputes it in the backward pass. Loss and gradients are those of
the plain path.

It is used only for architectures whose head is known to be ``lm_head(final hidden state)`` followed by
at most a softcap or a scale; anything else keeps the plain path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from ..data.templates import IGNORE_INDEX
from ..plan import chunk_tokens_for

# model_type -> how its ForCausalLM turns the head's output into logits (checked against transformers):
# "none" logits = lm_head(h); "softcap" cap * tanh(logits / cap) with config.final_logit_softcapping;
# "scale" logits * config.logit_scale; "divide" logits / config.logits_scaling.
_HEAD_TRANSFORMS: dict[str, str] = {
    **dict.fromkeys(("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "qwen3_5_text",
                     "phi3", "smollm3", "gemma", "olmo", "olmo2"), "none"),
    **dict.fromkeys(("gemma2", "gemma3_text"), "softcap"),
    **dict.fromkeys(("cohere", "cohere2"), "scale"),
    "granite": "divide",
}


@dataclass(frozen=True)
class LossHead:
    """The pieces of a causal LM the chunked loss calls: decoder, head module and logit transform.

    The transform is ``logits * scale``, then ``softcap * tanh(logits / softcap)`` when ``softcap`` is set.
    """

    decoder: torch.nn.Module
    head: torch.nn.Module
    scale: float = 1.0
    softcap: float | None = None

    def transform(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers causal LM inside a peft wrapper (whose LoRA layers sit inside it, in place)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _transform(kind: str, config: Any) -> tuple[float, float | None] | None:
    """(scale, softcap) of an architecture's logits; None when its config lacks the value it needs."""
    if kind == "none":
        return 1.0, None
    if kind == "softcap":
        cap = getattr(config, "final_logit_softcapping", None)
        return 1.0, None if cap is None else float(cap)
    value = getattr(config, {"scale": "logit_scale", "divide": "logits_scaling"}[kind], None)
    if value is None:
        return None
    return (float(value) if kind == "scale" else 1.0 / float(value)), None


def loss_head(model: torch.nn.Module) -> LossHead | None:
    """The decoder, head and transform of ``model``, or None when the plain loss must be used."""
    lm = _causal_lm(model)
    config = getattr(lm, "config", None)
    kind = _HEAD_TRANSFORMS.get(str(getattr(config, "model_type", "")))
    get_decoder, get_head = getattr(lm, "get_decoder", None), getattr(lm, "get_output_embeddings", None)
    if kind is None or get_decoder is None or get_head is None:
        return None
    try:
        decoder, head = get_decoder(), get_head()
    except (AttributeError, NotImplementedError, ValueError):
        return None
    transform = _transform(kind, config)
    if decoder is None or decoder is lm or head is None or transform is None:
        return None
    return LossHead(decoder=decoder, head=head, scale=transform[0], softcap=transform[1])


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of a plain linear head, gradients computed chunk by chunk in the forward.

    Each chunk's fp32 logits become their own gradient in place (softmax minus one-hot, times the
    transform's derivative) and are folded into the hidden-state and weight gradients at once, so the
    backward pass only scales them: no logits are kept and none are recomputed (Liger's fused
    linear cross-entropy, in plain PyTorch).
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, parts: LossHead, chunk: int) -> torch.Tensor:
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grads = (torch.zeros_like(hidden) if need_h else None, torch.zeros_like(weight) if need_w else None,
                 torch.zeros_like(bias) if need_b and bias is not None else None)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            total += _chunk_forward(parts, hidden, weight, bias, targets, start, chunk, grads)
        ctx.save_for_backward(*(g for g in grads if g is not None))
        ctx.present = (need_h, need_w, need_b)
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        saved = iter(ctx.saved_tensors)
        grads = [(lambda g: g * grad_out.to(g.dtype))(next(saved)) if present else None
                 for present in ctx.present]
        return (*grads, None, None, None)


def _chunk_forward(parts: LossHead, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   targets: torch.Tensor, start: int, chunk: int,
                   grads: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
    """One chunk's summed loss; its gradients are added into ``grads`` (hidden, weight, bias) in place.

    A function of its own so the chunk's logits are freed on return, before the next chunk's exist.
    """
    grad_h, grad_w, grad_b = grads
    h, t = hidden[start:start + chunk], targets[start:start + chunk]
    logits = parts.transform(torch.nn.functional.linear(h, weight, bias))
    slope = None if parts.softcap is None else 1 - (logits.float() / parts.softcap) ** 2
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    loss = (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
    if grad_h is None and grad_w is None and grad_b is None:
        return loss
    grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
    grad[torch.arange(t.shape[0], device=t.device), t] -= 1
    if slope is not None:
        grad.mul_(slope)
    if parts.scale != 1.0:
        grad.mul_(parts.scale)
    grad = grad.to(weight.dtype)
    if grad_h is not None:
        grad_h[start:start + chunk] = grad @ weight
    if grad_w is not None:
        grad_w.addmm_(grad.t(), h)
    if grad_b is not None:
        grad_b += grad.sum(0)
    return loss


def _chunk_loss(parts: LossHead, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = parts.transform(parts.head(hidden)).float()  # the plain path's order: head, transform, fp32
    return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")


def _vocab_size(head: torch.nn.Module) -> int:
    """Rows of the head's weight; a linear head, plain or LoRA-wrapped (whose ``weight`` is the base's)."""
    weight = head.weight
    assert isinstance(weight, torch.Tensor)
    return weight.shape[0]


def chunked_cross_entropy(parts: LossHead, hidden: torch.Tensor, targets: torch.Tensor,
                          chunk_tokens: int | None = None) -> torch.Tensor:
    """Summed cross-entropy of ``transform(head(hidden))`` against ``targets`` (no ignored ones).

    A plain ``nn.Linear`` head goes through the fused function above; any other head (a LoRA-wrapped
    one) runs each chunk under non-reentrant checkpointing, RNG kept so its dropout recomputes alike.
    """
    chunk = chunk_tokens or chunk_tokens_for(_vocab_size(parts.head))
    head = parts.head
    if type(head) is torch.nn.Linear:
        return _LinearCrossEntropy.apply(hidden, head.weight, head.bias, targets, parts, chunk)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start:start + chunk], targets[start:start + chunk]
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss, parts, h, t, use_reentrant=False)
        else:
            total = total + _chunk_loss(parts, h, t)
    return total


def forward_chunked(parts: LossHead, batch: dict[str, torch.Tensor], device: torch.device, *,
                    chunk_tokens: int | None = None) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the batch's targets and their number, logits built chunk by chunk.

    Called like the plain path (no attention mask, ``use_cache=False``), so packed samples stay apart.
    """
    out = parts.decoder(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                        use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    targets = batch["targets"].to(device).reshape(-1)
    keep = targets != IGNORE_INDEX
    hidden = hidden.reshape(-1, hidden.shape[-1])[keep]  # only label-bearing positions need logits
    n_targets = int(keep.sum())
    loss = chunked_cross_entropy(parts, hidden, targets[keep], chunk_tokens)
    return loss, n_targets


def forward_packed(model: torch.nn.Module, batch: dict[str, torch.Tensor], *,
                   chunked_loss: bool = False) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the batch's targets and the number of target tokens.

    ``use_cache=False`` and no attention mask are what make transformers respect sample boundaries.
    ``chunked_loss`` builds the logits a chunk of tokens at a time (``training.chunked_loss``) where the
    architecture allows it; the loss and gradients are the same.
    """
    device = next(model.parameters()).device
    if chunked_loss:
        parts = loss_head(model)
        if parts is not None:
            return forward_chunked(parts, batch, device)
    out = model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                use_cache=False)
    targets = batch["targets"].to(device)
    logits = out.logits.float()
    loss_sum = torch.nn.functional.cross_entropy(
        logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, int((targets != IGNORE_INDEX).sum())
