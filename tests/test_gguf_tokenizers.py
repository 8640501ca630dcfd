"""Our GGUF vocabularies, loaded by the real llama.cpp, tokenize exactly like the real Hugging Face tokenizers.

Tokenizers, test strings and expected ids come from registry packages (see support.assets):
llama.cpp's own tokenizer test files (``ggml-vocab-*.gguf.inp`` / ``.out``), and real tokenizers with
real chat templates for nine model families (support.real_tokenizers).
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")

from backpropagate.errors import BackpropagateError  # noqa: E402
from backpropagate.export.gguf_tokenizer import check_tokenizer, read_vocab  # noqa: E402
from backpropagate.export.gguf_vocab_kind import GPT4O_REGEX, tokenizer_kind  # noqa: E402
from backpropagate.export.parity import CONVERSATIONS, PLAIN_PROMPTS  # noqa: E402
from support import assets  # noqa: E402
from support.real_tokenizers import (  # noqa: E402
    MISTRAL_V3_TEMPLATE,
    REAL_FAMILIES,
    tokenizer_dir,
    vocab_tokenizer_dir,
    write_vocab_gguf,
)

SEPARATOR = "\n__ggml_vocab_test__\n"
# llama.cpp test vocabulary -> (how to get a tokenizer folder for it, same vocabulary so .out applies)
VOCAB_CASES: dict[str, tuple[Callable[[], Path], bool]] = {
    "llama-spm": (lambda: vocab_tokenizer_dir("llama-spm"), True),
    "phi-3": (lambda: tokenizer_dir("phi3.5"), True),
    "gpt-2": (lambda: vocab_tokenizer_dir("gpt-2"), True),
    "llama-bpe": (lambda: tokenizer_dir("llama3.2"), True),
    "qwen2": (lambda: tokenizer_dir("qwen2.5"), True),
    "qwen35": (lambda: tokenizer_dir("qwen3.5"), True),
}


def _available(make: Callable[[], Any]) -> Any:
    try:
        return make()
    except assets.AssetUnavailable as exc:
        pytest.skip(f"asset unavailable: {exc}")


class Loaded:
    """One tokenizer folder: the HF tokenizer and llama.cpp running our vocab-only GGUF of it."""

    def __init__(self, folder: Path, gguf_path: Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.info = write_vocab_gguf(folder, gguf_path, gguf_path.stem)
        self.llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)

    def gguf_ids(self, text: str, special: bool) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special))

    def hf_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str, Callable[[], Path]], Loaded]]:
    cache: dict[str, Loaded] = {}
    where = tmp_path_factory.mktemp("vocab")

    def get(key: str, make: Callable[[], Path]) -> Loaded:
        if key not in cache:
            cache[key] = Loaded(_available(make), where / f"{key}.gguf")
        return cache[key]

    yield get
    for item in cache.values():
        item.llm.close()


def _vocab_tests(name: str) -> tuple[list[str], list[list[int]]]:
    models = _available(assets.llama_cpp_models)
    texts = (models / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split(SEPARATOR)
    lines = (models / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").splitlines()
    texts[-1] = texts[-1].removesuffix(SEPARATOR.rstrip("\n"))  # the file ends with the separator
    if texts and texts[-1] in ("", "\n"):
        texts.pop()
    assert len(texts) == len(lines), name
    return texts, [[int(t) for t in line.split()] for line in lines]


@pytest.mark.parametrize("name", list(VOCAB_CASES))
def test_llama_cpp_vocab_strings(name: str, loaded: Callable[..., Loaded]) -> None:
    """llama.cpp's own tokenizer test strings: our GGUF == HF tokenizer == llama.cpp's expected ids."""
    make, same_vocab = VOCAB_CASES[name]
    item = loaded(name, make)
    texts, expected = _vocab_tests(name)
    for text, want in zip(texts, expected, strict=True):
        got = item.gguf_ids(text, special=False)
        assert got == item.hf_ids(text), f"{name}: {text!r}"
        if same_vocab:
            assert got == want, f"{name}: {text!r} differs from llama.cpp's .out"


def test_smollm_pre_tokenizer_on_llama_cpp_strings(loaded: Callable[..., Loaded]) -> None:
    """SmolLM2 (digits split one by one) has no .inp file of its own: use GPT-2's test strings."""
    item = loaded("smollm2", lambda: tokenizer_dir("smollm2"))
    assert item.info.pre == "smollm"
    texts, _ = _vocab_tests("gpt-2")
    for text in texts:
        assert item.gguf_ids(text, special=False) == item.hf_ids(text), repr(text)


@pytest.mark.parametrize("family", REAL_FAMILIES)
def test_real_family_parity_prompts(family: str, loaded: Callable[..., Loaded]) -> None:
    """The exporter's parity prompts, plain and rendered through the family's real chat template."""
    item = loaded(family, lambda: tokenizer_dir(family))
    tokenizer = item.tokenizer
    assert tokenizer.chat_template, family
    for text in PLAIN_PROMPTS:
        want = list(tokenizer(text)["input_ids"])
        assert list(item.llm.tokenize(text.encode(), add_bos=item.info.add_bos, special=False)) == want, text
    for conversation in CONVERSATIONS:
        text = tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)
        assert item.gguf_ids(text, special=True) == item.hf_ids(text), f"{family}: {text!r}"
    eos = item.info.special_ids["eos"]
    assert eos == tokenizer.eos_token_id and eos in item.info.stop_ids


def test_families_carry_their_special_tokens(loaded: Callable[..., Loaded]) -> None:
    expected = {"qwen3": (None, "<|im_end|>"), "llama3.2": ("<|begin_of_text|>", "<|eot_id|>"),
                "mistral": ("<s>", "</s>"), "phi3.5": ("<s>", "<|endoftext|>"), "gemma3": ("<bos>", "<end_of_turn>"),
                "smollm2": ("<|im_start|>", "<|im_end|>"), "smollm3": ("<|begin_of_text|>", "<|im_end|>")}
    for family, (bos, eos) in expected.items():
        tokenizer = loaded(family, lambda f=family: tokenizer_dir(f)).tokenizer
        assert (tokenizer.bos_token, tokenizer.eos_token) == (bos, eos), family


def test_spm_vocabulary_layout(loaded: Callable[..., Loaded]) -> None:
    """SentencePiece-style vocabularies: bytes, scores and prefix space as llama.cpp's converter writes them."""
    import gguf

    gemma = loaded("gemma3", lambda: tokenizer_dir("gemma3")).info
    assert (gemma.model, gemma.add_space_prefix, gemma.add_bos) == ("llama", False, True)
    assert gemma.tokens[238] == "<0x00>" and gemma.token_types[238] == gguf.TokenType.BYTE
    assert gemma.token_types[106] == gguf.TokenType.CONTROL  # <end_of_turn>
    assert gemma.tokens[138] == "  " and gemma.token_types[138] == gguf.TokenType.USER_DEFINED
    mistral = loaded("mistral", lambda: tokenizer_dir("mistral")).info
    assert mistral.add_space_prefix is True and mistral.merges == []
    assert mistral.scores is not None and len(mistral.scores) == len(mistral.tokens)
    phi = loaded("phi-3", lambda: tokenizer_dir("phi3.5")).info
    assert phi.strip_rule == "phi3"


def test_mistral_template_matches_mistral_common() -> None:
    """The written Mistral v0.3 template gives mistral_common's own token ids, system prompt included."""
    pytest.importorskip("mistral_common")
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_available(lambda: tokenizer_dir("mistral")))
    assert tokenizer.chat_template == MISTRAL_V3_TEMPLATE
    reference = MistralTokenizer.v3()
    kinds = {"user": UserMessage, "assistant": AssistantMessage, "system": SystemMessage}
    conversations = [*CONVERSATIONS, (
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "A joke?"},
        {"role": "assistant", "content": "No."}, {"role": "user", "content": "Please?"})]
    for conversation in conversations:
        request = ChatCompletionRequest(messages=[kinds[m["role"]](content=m["content"]) for m in conversation])
        want = reference.encode_chat_completion(request).tokens
        got = tokenizer.apply_chat_template(list(conversation), tokenize=True, add_generation_prompt=True)
        got = got["input_ids"] if hasattr(got, "keys") else got
        assert list(got) == want, conversation


@functools.cache
def _cached_json(family: str) -> str:
    return (_available(lambda: tokenizer_dir(family)) / "tokenizer.json").read_text(encoding="utf-8")


def _tokenizer_json(family: str) -> dict[str, Any]:
    return json.loads(_cached_json(family))


def test_gpt4o_regex_maps_and_tokenizes_like_hf(tmp_path: Path) -> None:
    """Phi-4-mini's split regex (llama.cpp "gpt-4o") on the Qwen vocabulary: llama.cpp agrees with HF."""
    data = _tokenizer_json("qwen3")
    data["normalizer"] = None
    data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = GPT4O_REGEX
    folder = tmp_path / "gpt4o"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}), encoding="utf-8")
    item = Loaded(folder, tmp_path / "gpt4o.gguf")
    try:
        assert item.info.pre == "gpt-4o"
        texts, _ = _vocab_tests("gpt-2")
        for text in [*texts, *PLAIN_PROMPTS, "HTTPServer isn't JSONParser's 12345 xml/html"]:
            assert item.gguf_ids(text, special=False) == item.hf_ids(text), repr(text)
    finally:
        item.llm.close()


def _unsupported_variants() -> dict[str, dict[str, Any]]:
    qwen = _tokenizer_json("qwen3")
    unknown_regex = copy.deepcopy(qwen)
    unknown_regex["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\w+|\s+"
    wordpiece = {"model": {"type": "WordPiece", "vocab": {"[UNK]": 0}}, "normalizer": None, "pre_tokenizer": None}
    unigram = {"model": {"type": "Unigram", "vocab": [["<unk>", 0.0]]}, "normalizer": None, "pre_tokenizer": None}
    metaspace = copy.deepcopy(_tokenizer_json("mistral"))
    metaspace["normalizer"] = None
    metaspace["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first",
                                  "split": False}
    lstrip = copy.deepcopy(qwen)
    lstrip["added_tokens"][0]["lstrip"] = True
    return {"bpe-unknown-regex": unknown_regex, "wordpiece": wordpiece, "unigram": unigram,
            "metaspace-first": metaspace, "lstrip-added-token": lstrip}


def test_unsupported_tokenizers_are_refused(tmp_path: Path, loaded: Callable[..., Loaded]) -> None:
    variants = _unsupported_variants()
    for name, data in variants.items():
        reason = check_tokenizer(data)
        assert reason and "llama.cpp" in reason, name
        if name == "bpe-unknown-regex":  # read_vocab refuses with the code, before any file is written
            folder = tmp_path / name
            folder.mkdir()
            (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
            tokenizer = loaded("qwen3", lambda: tokenizer_dir("qwen3")).tokenizer
            with pytest.raises(BackpropagateError) as caught:
                read_vocab(folder, tokenizer, len(tokenizer))
            assert caught.value.code == "INPUT_UNSUPPORTED_TOKENIZER"
            assert "qwen2" in caught.value.message and "gpt-4o" in caught.value.message
    with pytest.raises(BackpropagateError) as caught:
        tokenizer_kind(variants["wordpiece"])
    assert caught.value.code == "INPUT_UNSUPPORTED_TOKENIZER"


def test_check_tokenizer_accepts_every_family() -> None:
    for family in REAL_FAMILIES:
        assert check_tokenizer(_available(lambda f=family: tokenizer_dir(f))) is None, family
    assert "does not exist" in (check_tokenizer(Path("/nonexistent/folder")) or "")


def test_check_tokenizer_kind_for_presets() -> None:
    from backpropagate.export.gguf_tokenizer import check_tokenizer_kind

    for kind in ("gpt-2", "smollm", "llama-bpe", "qwen2", "qwen35", "gpt-4o", "llama-spm"):
        assert check_tokenizer_kind(kind) is None, kind
    assert "tekken" in (check_tokenizer_kind("tekken") or "")
