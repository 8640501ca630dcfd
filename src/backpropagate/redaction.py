"""Secret redaction for everything this package prints, logs or stores.

Users paste tokens into model ids, dataset paths, URLs and environment dumps; an exception message then
carries them into the terminal, a log file or ``runs.db``. :func:`redact` masks:

* known token shapes (``hf_``, ``sk-``, AWS ``AKIA``/``ASIA``, GitHub ``ghp_``/``github_pat_``, Slack
  ``xox?-``, GitLab ``glpat-``, Google ``AIza``, ``Bearer ...``), also inside a path such as
  ``/data/hf_AbCd1234/model``;
* the userinfo of a URL (``https://user:pass@host`` -> ``https://***@host``);
* the value of any ``key=value`` / ``key: value`` / ``"key": "value"`` / ``?key=value`` pair whose key
  names a credential (``password``, ``db_password``, ``MY_API_KEY``, ``accessToken``, ``HF_TOKEN`` ...).

Keys are split into words (``_ - .`` and camelCase) so ``max_tokens``, ``num_tokens``, ``token_count``,
``tokenizer.json`` and the special-token names of tokenizers (``eos_token`` ...) are left alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import BackpropagateError

__all__ = ["MASK", "check_model_id", "is_redacted", "redact", "redact_tree", "sensitive_key"]

MASK = "***"

_ALNUM_BEFORE = r"(?<![A-Za-z0-9])"
# A token needs a digit or an upper-case letter unless it is long: `hf_transfer` is a word, not a token.
_TOKENISH = r"(?:{chars}{{20,}}|(?={chars}*[0-9A-Z]){chars}{{{min},}})"

_SECRET_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(_ALNUM_BEFORE + "hf_" + _TOKENISH.format(chars="[A-Za-z0-9]", min=8)), "hf_***"),
    (re.compile(_ALNUM_BEFORE + "sk-" + _TOKENISH.format(chars=r"[A-Za-z0-9_\-]", min=8)), "sk-***"),
    (re.compile(_ALNUM_BEFORE + r"(AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])"), r"\1***"),
    (re.compile(_ALNUM_BEFORE + r"(gh[pousr]_)[A-Za-z0-9]{20,}"), r"\1***"),
    (re.compile(_ALNUM_BEFORE + r"github_pat_[A-Za-z0-9_]{20,}"), "github_pat_***"),
    (re.compile(_ALNUM_BEFORE + r"(xox[abeoprs]-)[A-Za-z0-9\-]{10,}"), r"\1***"),
    (re.compile(_ALNUM_BEFORE + r"glpat-[A-Za-z0-9_\-]{20,}"), "glpat-***"),
    (re.compile(_ALNUM_BEFORE + r"AIza[0-9A-Za-z_\-]{35}"), "AIza***"),
    # "bearer password" is prose: a bearer token is long, or has a digit, a capital or punctuation.
    (re.compile(r"\b([Bb]earer|BEARER)\s+(?=[A-Za-z0-9])"
                r"(?:[\w.~+/=\-]{20,}|(?=[\w.~+/=\-]*[0-9A-Z._~+/=\-])[\w.~+/=\-]{8,})", re.ASCII), r"\1 ***"),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/?#@\"'<>]+@"), r"\1***@"),  # URL userinfo
]

# A key, optionally quoted, then = or : (a query parameter, an env assignment, YAML, JSON, a repr).
_KEY = re.compile(r"""(?<![\w.\-])(?P<q>["']?)(?P<key>[\w.\-]+)\\?(?P=q)\s*[=:]\s*""")
_VALUE = re.compile(r"""(?P<scheme>(?i:bearer|basic|token|digest)\s+)?(?P<value>"""
                    r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'"""  # "quoted" or 'quoted'
                    r"""|\\"(?:(?!\\").)*\\"|\\'(?:(?!\\').)*\\'"""  # \"quoted\" inside a quoted string
                    r"""|[^\s,;&'"]+)""")
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")

_SECRET_WORDS = frozenset({"password", "passwd", "pwd", "passphrase", "secret", "secrets", "credential",
                           "credentials", "auth", "authorization", "oauth", "apikey", "accesskey",
                           "privatekey", "signature", "sig", "cookie"})
_SECRET_JOINED = ("password", "passwd", "secret", "credential", "apikey", "accesskey", "privatekey")
_KEY_QUALIFIERS = frozenset({"api", "access", "private", "secret", "signing", "encryption", "master",
                             "account", "subscription", "client", "service", "shared", "storage", "auth"})
# Tokenizer vocabulary: `eos_token=</s>` names a special token, not a credential.
_SPECIAL_TOKEN_WORDS = frozenset({"eos", "bos", "pad", "unk", "sep", "cls", "mask", "special", "image", "audio",
                                  "video", "vision", "start", "end", "im", "eot", "sot", "boi", "eoi", "fim",
                                  "think", "begin", "decoder", "padding", "unknown", "separator", "additional"})


def sensitive_key(key: str) -> bool:
    """Whether a setting, query parameter or env var named ``key`` holds a credential."""
    words = [w.lower() for w in _WORD.findall(key)]
    if not words:
        return False
    joined = "".join(words)
    if any(w in _SECRET_WORDS for w in words) or any(part in joined for part in _SECRET_JOINED):
        return True
    if words[-1] == "token":
        return not any(w in _SPECIAL_TOKEN_WORDS for w in words[:-1])
    return words[-1] == "key" and len(words) > 1 and words[-2] in _KEY_QUALIFIERS


def _redact_pairs(text: str) -> str:
    """Mask the value of every credential-named pair; other pairs are scanned on, value included."""
    out: list[str] = []
    done = search = 0
    while (key := _KEY.search(text, search)) is not None:
        value = _VALUE.match(text, key.end())
        if value is None or not sensitive_key(key["key"]):
            search = key.end("key")
            continue
        out += [text[done:value.start("value")], _mask(value["value"])]
        done = search = value.end()
    return "".join(out) + text[done:] if out else text


def _mask(value: str) -> str:
    """``***``, inside the value's own quotes, so JSON stays JSON and redacting twice changes nothing."""
    quote = value[:2] if value[:2] in ("\\\"", "\\'") else value[:1] if value[:1] in "\"'" else ""
    return quote + MASK + quote


def redact(text: str) -> str:
    """Replace anything that looks like a credential with ``***``; idempotent, ordinary text unchanged."""
    if not isinstance(text, str):
        return text
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return _redact_pairs(text)


def redact_tree(value: Any, key: str | None = None) -> Any:
    """A copy of a JSON-like value with every string redacted, and masked whole under a credential key."""
    if isinstance(value, str):
        return MASK if key is not None and sensitive_key(key) and value else redact(value)
    if isinstance(value, Mapping):
        return {k: redact_tree(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_tree(v) for v in value]
    return value


def is_redacted(text: str | None) -> bool:
    """True for a value that was stored redacted (so it cannot be opened again from the history)."""
    return isinstance(text, str) and MASK in text


# A query string, user:password@, a URL or a key=value: never part of a hub id, always of a pasted credential.
_CREDENTIAL_SYNTAX = re.compile(r"[?&=@]|://")


def check_model_id(name: str | None) -> None:
    """Refuse a model id that is not a local folder and carries a credential, before anything loads it.

    The id would otherwise reach the hub client, the logs and the history; a local folder whose path
    happens to hold a token is fine (it is stored redacted).
    """
    if not isinstance(name, str) or redact(name) == name or not _CREDENTIAL_SYNTAX.search(name):
        return
    try:
        if Path(name).expanduser().exists():
            return
    except OSError:
        pass
    raise BackpropagateError("INPUT_MODEL_ID_HAS_CREDENTIALS",
                             f"the model id {redact(name)!r} carries a credential; nothing was loaded.")
