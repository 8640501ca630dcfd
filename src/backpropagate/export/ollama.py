"""Ollama: a Modelfile that keeps the chat format and stop tokens, and registration over Ollama's HTTP API.

Registration follows Ollama's documented API: ``HEAD /api/blobs/sha256:<digest>`` (is the file already
there?), ``POST /api/blobs/sha256:<digest>`` with the file as body (201 Created), then ``POST /api/create``
with ``{"model", "files": {name: digest}, "adapters", "template", "system", "parameters", "stream": false}``.
The server URL comes from ``OLLAMA_HOST`` (default ``http://127.0.0.1:11434``). When the server cannot be
reached the GGUF and Modelfile stay where they are and the error carries the command that finishes the job.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomically
from ..errors import BackpropagateError
from .ollama_templates import choose_template

DEFAULT_HOST = "http://127.0.0.1:11434"
DEFAULT_NUM_CTX = 4096
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?(:[A-Za-z0-9._-]+)?$")


@dataclass
class Modelfile:
    """Everything the Modelfile (and the equivalent /api/create request) says."""

    model: Path
    template: str
    template_name: str
    stop: list[str]
    num_ctx: int
    adapter: Path | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    template_note: str = ""  # tool calls / reasoning: verified, or why Ollama is not offered them

    def text(self) -> str:
        lines = ["# Written by backpropagate; the TEMPLATE reproduces the model's chat template "
                 f"({self.template_name}).", f"FROM {_quote_path(self.model)}"]
        if self.template_note:
            lines.insert(1, f"# {self.template_note}")
        if self.adapter is not None:
            lines.append(f"ADAPTER {_quote_path(self.adapter)}")
        lines.append(f'TEMPLATE """{self.template}"""')
        if self.system:
            lines.append(f'SYSTEM """{self.system}"""')
        lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in self.stop]
        lines.append(f"PARAMETER num_ctx {self.num_ctx}")
        return "\n".join(lines) + "\n"


def _quote_path(path: Path) -> str:
    text = str(path)
    return json.dumps(text) if any(c.isspace() for c in text) else text


def build_modelfile(gguf_path: Path, model_dir: Path, *, stop_tokens: list[str], context_length: int,
                    adapter_path: Path | None = None, system: str | None = None,
                    num_ctx: int | None = None) -> Modelfile:
    """The Modelfile for ``gguf_path``; INPUT_TEMPLATE_UNTRANSLATABLE (with the reason) when no verified
    TEMPLATE reproduces the chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("a")["input_ids"]
    bos_added = tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id
    choice = choose_template(tokenizer, bos_added)
    if choice.template is None or choice.name is None:
        raise BackpropagateError("INPUT_TEMPLATE_UNTRANSLATABLE",
                                 f"no Ollama TEMPLATE reproduces this chat template: {choice.reason}")
    if system is not None and '"""' in system:
        raise BackpropagateError("INPUT_INVALID_VALUE", 'system prompts cannot contain """ in a Modelfile.')
    ctx = num_ctx or min(context_length, DEFAULT_NUM_CTX)
    if ctx <= 0:
        raise BackpropagateError("INPUT_INVALID_VALUE", f"num_ctx={num_ctx!r} is invalid: expected a positive integer.")
    return Modelfile(model=gguf_path.resolve(), template=choice.template, template_name=choice.name, stop=stop_tokens,
                     num_ctx=ctx, adapter=adapter_path.resolve() if adapter_path else None, system=system,
                     template_note=choice.note)


def write_modelfile(modelfile: Modelfile, path: Path) -> Path:
    return write_text_atomically(path, modelfile.text())


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise BackpropagateError("INPUT_INVALID_VALUE",
                                 f"ollama name {name!r} is invalid: expected letters, digits, '.', '_' or '-', "
                                 "optionally namespace/ and :tag.")
    return name


def ollama_host() -> str:
    """The server URL from OLLAMA_HOST (which may omit the scheme or port), else the default."""
    raw = os.environ.get("OLLAMA_HOST", "").strip()
    if not raw:
        return DEFAULT_HOST
    if "://" not in raw:
        raw = "http://" + raw
    scheme, rest = raw.split("://", 1)
    host = rest.rstrip("/")
    if ":" not in host.rsplit("]", 1)[-1]:
        host += ":11434"
    return f"{scheme}://{host.replace('0.0.0.0', '127.0.0.1')}"


def file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return "sha256:" + sha.hexdigest()


def _request(method: str, url: str, *, body: Any = None, data_file: Path | None = None,
             timeout: float = 600) -> tuple[int, bytes]:
    headers: dict[str, str] = {}
    data: Any = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    if data_file is not None:
        data = data_file.open("rb")
        headers["Content-Length"] = str(data_file.stat().st_size)
        headers["Content-Type"] = "application/octet-stream"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    finally:
        if data_file is not None:
            data.close()


def _push_blob(host: str, path: Path) -> str:
    digest = file_digest(path)
    status, _ = _request("HEAD", f"{host}/api/blobs/{digest}")
    if status == 200:
        return digest
    status, payload = _request("POST", f"{host}/api/blobs/{digest}", data_file=path)
    if status not in (200, 201):
        raise BackpropagateError("DEP_OLLAMA_REGISTRATION_FAILED",
                                 f"Ollama refused the upload of {path.name} (HTTP {status}): {_error_text(payload)}",
                                 retryable=False)
    return digest


def _error_text(payload: bytes) -> str:
    try:
        return str(json.loads(payload).get("error", payload.decode("utf-8", "replace")))[:300]
    except (ValueError, AttributeError):
        return payload.decode("utf-8", "replace")[:300]


def _status(payload: bytes) -> str:
    """The final status of a (non-streamed, or streamed: last line) /api/create answer."""
    lines = [line for line in payload.decode("utf-8", "replace").splitlines() if line.strip()]
    try:
        return str(json.loads(lines[-1]).get("status", "")) if lines else ""
    except ValueError:
        return ""


def manual_command(name: str, modelfile_path: Path) -> str:
    return f"ollama create {name} -f {_quote_path(modelfile_path.resolve())}"


def register(name: str, modelfile: Modelfile, modelfile_path: Path, *, host: str | None = None) -> str:
    """Upload the GGUF (and adapter) and create model ``name`` on the Ollama server; returns the host used."""
    check_model_name(name)
    host = (host or ollama_host()).rstrip("/")
    try:
        files = {modelfile.model.name: _push_blob(host, modelfile.model)}
        adapters = {modelfile.adapter.name: _push_blob(host, modelfile.adapter)} if modelfile.adapter else None
        body: dict[str, Any] = {"model": name, "files": files, "template": modelfile.template,
                                "parameters": {"stop": modelfile.stop, "num_ctx": modelfile.num_ctx},
                                "stream": False}
        if adapters:
            body["adapters"] = adapters
        if modelfile.system:
            body["system"] = modelfile.system
        status, payload = _request("POST", f"{host}/api/create", body=body)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BackpropagateError(
            "DEP_OLLAMA_REGISTRATION_FAILED",
            f"cannot reach the Ollama server at {host} ({reason}); the GGUF and {modelfile_path} were kept. "
            f"Finish by hand with: {manual_command(name, modelfile_path)}") from exc
    if status != 200 or _status(payload) != "success":
        raise BackpropagateError(
            "DEP_OLLAMA_REGISTRATION_FAILED",
            f"Ollama could not create {name!r} (HTTP {status}): {_error_text(payload)}. The files were kept; "
            f"retry with: {manual_command(name, modelfile_path)}", retryable=False)
    return host
