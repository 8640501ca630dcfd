"""Shared helpers for the export tests: trained adapters (cached per session), and local servers that speak
Ollama's and the Hugging Face Hub's HTTP APIs (neither service can run on the test machines)."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@functools.cache
def trained_adapter(family: str, size: str, root: str, steps: int = 30, learning_rate: float = 1e-2) -> Path:
    """Train a LoRA adapter on the quickstart data once per session; returns its folder."""
    from backpropagate import Trainer
    from backpropagate.demo import quickstart_path
    from backpropagate.testing import build_tiny_model

    base = build_tiny_model(family, size=size, seed=0)
    out = Path(root) / f"trained-{family}-{size}"
    trainer = Trainer(str(base), lora_r=16, lora_alpha=32, lora_dropout=0.0, learning_rate=learning_rate, batch_size=2,
                      gradient_accumulation=1, max_seq_length=128, warmup_ratio=0.0, output_dir=out, seed=0)
    run = trainer.train(str(quickstart_path()), steps=steps)
    assert run.final_loss < run.loss_history[0]
    return Path(run.output_path)


def random_adapter(base: Path, out: Path, **lora: Any) -> Path:
    """A PEFT LoRA adapter with random (non-zero) A and B, saved like trainer.save does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(**{"r": 8, "lora_alpha": 16, "target_modules": "all-linear", "lora_dropout": 0.0,
                           "init_lora_weights": False, **lora})
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeServer:
    url: str
    requests: list[Recorded] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)


def _serve(handle: Any) -> Iterator[FakeServer]:
    server_state = FakeServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def _record(self, method: str) -> Recorded:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            item = Recorded(method, self.path, dict(self.headers), body)
            server_state.requests.append(item)
            return item

        def _reply(self, code: int, payload: Any = None, headers: dict[str, str] | None = None) -> None:
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(code)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
            handle(self, self._record("HEAD"), server_state)

        def do_POST(self) -> None:  # noqa: N802
            handle(self, self._record("POST"), server_state)

        def do_GET(self) -> None:  # noqa: N802
            handle(self, self._record("GET"), server_state)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_state.url = f"http://127.0.0.1:{httpd.server_port}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_state
    finally:
        httpd.shutdown()
        httpd.server_close()


def _ollama(handler: Any, req: Recorded, state: FakeServer) -> None:
    """Ollama's documented API: HEAD/POST /api/blobs/sha256:<hex>, POST /api/create (stream false)."""
    blobs = state.state.setdefault("blobs", {})
    if req.path.startswith("/api/blobs/"):
        digest = req.path.rsplit("/", 1)[1]
        if req.method == "HEAD":
            handler._reply(200 if digest in blobs else 404)
        elif "sha256:" + hashlib.sha256(req.body).hexdigest() != digest:
            handler._reply(400, {"error": "digest mismatch"})
        else:
            blobs[digest] = len(req.body)
            handler._reply(201)
    elif req.path == "/api/create" and req.method == "POST":
        body = req.json()
        missing = [d for d in list(body.get("files", {}).values()) + list((body.get("adapters") or {}).values())
                   if d not in blobs]
        if missing or not body.get("model"):
            handler._reply(400, {"error": f"missing blobs {missing}"})
        else:
            state.state.setdefault("models", {})[body["model"]] = body
            handler._reply(200, {"status": "success"})
    else:
        handler._reply(404, {"error": "not found"})


def _hub(handler: Any, req: Recorded, state: FakeServer) -> None:
    """The Hub endpoints huggingface_hub uses to create a repo and commit small files in one go; any file of
    another repo is "Repository not found" (401 with X-Error-Code, as huggingface.co answers anonymously)."""
    if state.state.get("deny"):
        handler._reply(401, {"error": "Invalid credentials in Authorization header"})
    elif req.path == "/api/repos/create":
        body = req.json()
        state.state["repo"] = body
        handler._reply(200, {"url": f"{state.url}/{body.get('organization')}/{body['name']}"})
    elif req.path == "/api/validate-yaml":
        handler._reply(200, {"errors": [], "warnings": []})
    elif "/preupload/" in req.path:
        files = req.json()["files"]
        handler._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                       for f in files]})
    elif "/resolve/" in req.path:  # a file of a repo this Hub does not have: what huggingface.co answers
        handler._reply(401, {"error": "Repository not found"},
                       {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
    elif "/commit/" in req.path:
        lines = [json.loads(line) for line in req.body.decode().splitlines() if line.strip()]
        state.state["commit"] = {
            v["value"]["path"]: base64.b64decode(v["value"]["content"]) for v in lines if v["key"] == "file"}
        repo = req.path.split("/api/models/", 1)[1].split("/commit/", 1)[0]
        handler._reply(200, {"commitUrl": f"{state.url}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40})
    else:
        handler._reply(404, {"error": "not found"})


@contextmanager
def fake_ollama() -> Iterator[FakeServer]:
    yield from _serve(_ollama)


@contextmanager
def fake_hub() -> Iterator[FakeServer]:
    yield from _serve(_hub)


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
