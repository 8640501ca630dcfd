"""The chunked loss is the plain loss: same value (1e-6 relative) and LoRA gradients (1e-5) on real
tokenizers' vocabularies (Qwen's 151k, Gemma 3's 262k with a logit softcap), packed rows, response-only
and all-token targets, tied and LoRA-adapted heads; and a Trainer run gives the same losses with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backpropagate import Trainer
from backpropagate.data import load_examples, tokenize_examples
from backpropagate.data.packing import collate, pack
from backpropagate.demo import quickstart_path
from backpropagate.training.chunked_loss import forward_chunked, forward_packed, loss_head
from support.assets import AssetUnavailable


def _real_family(family: str) -> Path:
    from support.real_families import build_real_family_model

    try:
        return build_real_family_model(family)
    except AssetUnavailable as exc:
        pytest.skip(f"the real {family} tokenizer is not available offline: {exc}")


def _lora_model(folder: Path, targets: object = "all-linear", softcap: float | None = None) -> tuple:
    """A LoRA model with random A and B (B = 0 would give A zero gradients), and its tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if softcap is not None:
        model.config.final_logit_softcapping = softcap
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0,
                                             init_lora_weights=False))
    return model, AutoTokenizer.from_pretrained(folder)


def _batch(tokenizer: object, train_on_responses: bool) -> dict[str, torch.Tensor]:
    examples = load_examples(str(quickstart_path())).examples
    samples = tokenize_examples(tokenizer, examples, train_on_responses=train_on_responses)
    plan = pack(samples, 256, seed=0)
    rows = plan.rows[:2]
    assert all(len(r.sample_ids) >= 2 for r in rows)  # several samples share each row
    return collate(rows, tokenizer.pad_token_id)


def _loss_and_grads(model: torch.nn.Module, batch: dict, **kw: object) -> tuple[torch.Tensor, int, dict]:
    model.zero_grad(set_to_none=True)
    if kw:
        loss, n = forward_chunked(loss_head(model), batch, torch.device("cpu"), **kw)
    else:
        loss, n = forward_packed(model, batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), n, grads


def _assert_same(model: torch.nn.Module, batch: dict) -> None:
    plain, n_plain, g_plain = _loss_and_grads(model, batch)
    for chunk in (64, None):  # many chunks, and the default
        loss, n, grads = _loss_and_grads(model, batch, chunk_tokens=chunk)
        assert n == n_plain > 0
        assert loss.item() == pytest.approx(plain.item(), rel=1e-6)
        assert grads.keys() == g_plain.keys() and grads
        for name, grad in grads.items():
            scale = float(g_plain[name].abs().max())  # 1e-5 relative to the tensor's largest gradient
            torch.testing.assert_close(grad, g_plain[name], rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("train_on_responses", [True, False])
def test_qwen_vocabulary_packed_rows_same_loss_and_gradients(train_on_responses: bool) -> None:
    model, tokenizer = _lora_model(_real_family("qwen2.5"))
    assert model.config.vocab_size > 150_000 and model.config.tie_word_embeddings  # tied head
    parts = loss_head(model)
    assert parts is not None and parts.head.weight is model.get_input_embeddings().weight
    batch = _batch(tokenizer, train_on_responses)
    assert (batch["targets"] == -100).any()  # sample ends (and prompts) carry no label
    _assert_same(model, batch)


def test_gemma3_softcapped_logits_same_loss_and_gradients() -> None:
    model, tokenizer = _lora_model(_real_family("gemma3"), softcap=2.0)  # small cap: tanh really bends
    _assert_same(model, _batch(tokenizer, train_on_responses=True))


def test_a_head_with_its_own_lora_adapter(tiny_llama: Path) -> None:
    model, tokenizer = _lora_model(tiny_llama, targets=["q_proj", "v_proj", "lm_head"])
    parts = loss_head(model)
    assert parts is not None and hasattr(parts.head, "lora_A")  # the LoRA-wrapped head itself is called
    _assert_same(model, _batch(tokenizer, train_on_responses=True))


@pytest.mark.parametrize(("softcap", "scale", "bias"), [(None, 1.0, False), (2.0, 0.7, True)])
def test_fused_head_gradients_for_a_trained_head(softcap: float | None, scale: float, bias: bool) -> None:
    """Full fine-tuning trains the head: its weight and bias gradients match autograd's too."""
    from backpropagate.training.chunked_loss import LossHead, chunked_cross_entropy

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 5000, bias=bias)
    hidden, targets = torch.randn(300, 16, requires_grad=True), torch.randint(0, 5000, (300,))
    parts = LossHead(decoder=torch.nn.Identity(), head=head, scale=scale, softcap=softcap)
    params = [hidden, *head.parameters()]
    plain = torch.nn.functional.cross_entropy(parts.transform(head(hidden)).float(), targets, reduction="sum")
    chunked = chunked_cross_entropy(parts, hidden, targets, 64)
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-6)
    for ours, ref in zip(torch.autograd.grad(chunked * 1.7, params), torch.autograd.grad(plain * 1.7, params),
                         strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_unknown_structure_keeps_the_plain_path() -> None:
    assert loss_head(torch.nn.Linear(4, 4)) is None


def test_trainer_losses_match_with_and_without_chunked_loss(tmp_path: Path) -> None:
    folder = _real_family("qwen2.5")
    losses = {}
    for chunked in (True, False):
        trainer = Trainer(str(folder), chunked_loss=chunked, lora_preset="fast", batch_size=1,
                          gradient_accumulation=2, max_seq_length=256, output_dir=tmp_path / str(chunked),
                          save_steps=0)
        losses[chunked] = trainer.train(str(quickstart_path()), steps=3).loss_history
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
