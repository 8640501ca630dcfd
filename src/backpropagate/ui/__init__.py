"""The web UI (``backprop ui``): Gradio pages over the Python API, one background job, a sandbox.

Gradio is imported only by :func:`launch` / :func:`build_app` (the ``ui`` extra), so importing this
package, and ``backprop --help``, stay fast. The rules in :mod:`.security` are checked before Gradio is
even imported: an exposed UI without credentials never starts.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ..errors import BackpropagateError
from ..logs import get_logger
from .security import MAX_UPLOAD_BYTES, LoginGuard, check_exposure, parse_auth, resolve_auth, sandbox_root

__all__ = ["build_app", "launch", "require_gradio"]


def require_gradio() -> Any:
    """Import gradio, or say which extra installs it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as exc:
        raise BackpropagateError("DEP_EXTRA_MISSING", "the web UI needs gradio, which is not installed.",
                                 hint='pip install "backpropagate[ui]"') from exc
    return gradio


def build_app(workspace: Any = None) -> Any:
    """The Gradio Blocks app over ``workspace`` (a :class:`.workspace.Workspace`; default: the sandbox)."""
    require_gradio()
    from .app import build_app as _build  # lazy: gradio
    from .workspace import Workspace  # lazy: gradio, torch

    return _build(workspace or Workspace())


def launch(*, host: str = "127.0.0.1", port: int = 7862, share: bool = False, auth: str | None = None,
           auth_file: str | os.PathLike[str] | None = None, block: bool = True) -> Any:
    """Check the exposure rules, then serve the UI. Credentials are passed to Gradio, never printed.

    ``auth`` (user:password), else ``auth_file``, else ``BACKPROPAGATE_UI__AUTH_FILE`` or
    ``BACKPROPAGATE_UI__AUTH``: the last three keep the password out of the process list.
    """
    credentials, source = resolve_auth(auth, auth_file)
    check_exposure(host, share, credentials)
    guard = LoginGuard(*parse_auth(credentials, source)) if credentials else None
    root = sandbox_root(os.environ.get("BACKPROPAGATE_UI__OUTPUT_DIR"))
    root.mkdir(parents=True, exist_ok=True)
    # Gradio's own upload cache lives in the sandbox too, so the UI writes nowhere else.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(root / ".gradio"))
    require_gradio()
    from .app import CSS  # lazy: gradio
    from .workspace import Workspace  # lazy: gradio, torch

    demo = build_app(Workspace(root))
    get_logger().info("ui_starting", url=f"http://{host}:{port}", sandbox=str(root), share=share,
                      login=f"on ({source})" if guard else "off")
    # quiet: our own line instead of Gradio's banner, whose advice (share=True) is what check_exposure guards.
    app = demo.launch(server_name=host, server_port=port, share=share, auth=guard,
                      auth_message="backpropagate: sign in" if guard else None, max_file_size=MAX_UPLOAD_BYTES,
                      allowed_paths=[str(root)], ssr_mode=False, show_error=False, quiet=True,
                      prevent_thread_lock=True, css=CSS)
    shared = f"; public link: {demo.share_url}" if share and getattr(demo, "share_url", None) else ""
    sys.stderr.write(f"backpropagate UI: open http://{host}:{port} (files stay in {root}{shared}). "
                     "Ctrl-C stops it.\n")
    sys.stderr.flush()
    if block:
        demo.block_thread()
    return app
