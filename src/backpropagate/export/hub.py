"""Push an adapter, merged or GGUF folder to a Hugging Face Hub repo, with a generated model card.

Everything goes up in one commit (``HfApi.create_commit``), so the repo never shows half an upload. The
token comes from ``token=``, ``HF_TOKEN`` or ``hf auth login``; it is handed to huggingface_hub only and
never printed. ``HF_ENDPOINT`` (read when pushing) points the client at another Hub, e.g. a local one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BackpropagateError
from ..logs import redact
from .model_card import build_card, folder_kind

_SKIP_SUFFIXES = (".partial", ".pyc")


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    url: str
    files: list[str]
    private: bool


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(_SKIP_SUFFIXES)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _is_peft_template(readme: Path) -> bool:
    """peft's ``save_pretrained`` writes a placeholder card; ours says more, so it replaces that one only."""
    return "[More Information Needed]" in readme.read_text(encoding="utf-8", errors="replace")


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
                run: Any = None, commit_message: str | None = None, endpoint: str | None = None) -> PushResult:
    """Create ``repo_id`` if needed and upload ``folder`` (+ a README.md model card unless it has its own)."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.constants import is_offline_mode
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    folder = Path(folder).expanduser()
    if not folder.is_dir() or folder_kind(folder) == "unknown":
        raise BackpropagateError("INPUT_NOT_A_MODEL_DIR",
                                 f"{str(folder)!r} is not an adapter, merged-model or GGUF folder.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise BackpropagateError("INPUT_INVALID_VALUE", f"repo {repo_id!r} is not a valid repo id: {exc}",
                                 hint="Use the form your-name/model-name.") from exc
    token = token or get_token()
    if not token:
        raise BackpropagateError("HUB_PUSH_AUTH_REQUIRED", f"no Hugging Face token found to push to {repo_id}.")
    if is_offline_mode():
        raise BackpropagateError("HUB_PUSH_FAILED", f"cannot push to {repo_id}: Hugging Face offline mode is on "
                                 "(HF_HUB_OFFLINE=1).", hint="Unset HF_HUB_OFFLINE (or set it to 0) and push again.")
    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token)
    files = [p for p in _files(folder) if not (p.relative_to(folder).as_posix() == "README.md"
                                                  and _is_peft_template(p))]
    operations = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
                  for p in files]
    names = [op.path_in_repo for op in operations]
    if "README.md" not in names:
        card, _ = build_card(folder, run)
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
        names.append("README.md")
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.create_commit(repo_id, operations, commit_message=commit_message or
                                 f"Upload {folder_kind(folder)} from backpropagate", repo_type="model")
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise BackpropagateError("HUB_PUSH_AUTH_REQUIRED",
                                     f"the Hub refused the token for {repo_id} (HTTP {status}).") from exc
        raise BackpropagateError("HUB_PUSH_FAILED", f"pushing to {repo_id} failed: "
                                 f"{redact(str(exc).splitlines()[0])[:300]}") from exc
    except Exception as exc:  # noqa: BLE001 - network errors of whichever HTTP client the hub library uses
        raise BackpropagateError("HUB_PUSH_FAILED", f"pushing to {repo_id} failed: {type(exc).__name__}: "
                                 f"{redact(str(exc))[:300]}") from exc
    return PushResult(repo_id=repo_id, url=str(getattr(info, "commit_url", "") or repo_id), files=names,
                      private=private)
