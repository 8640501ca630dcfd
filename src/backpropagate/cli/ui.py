"""``backprop ui``: a thin shell over ``backpropagate.ui.launch`` (gradio is imported only when it runs)."""

from __future__ import annotations

import typer

from . import app


@app.command("ui")
def ui(
    port: int = typer.Option(7862, "--port", help="Port to serve the web UI on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; anything but loopback "
                             "needs credentials."),
    share: bool = typer.Option(False, "--share", help="Also publish a temporary public Gradio link "
                               "(needs credentials)."),
    auth: str = typer.Option(None, "--auth", help="user:password required to open the page (never logged, but "
                             "visible to other users in the process list: prefer BACKPROPAGATE_UI__AUTH or "
                             "--auth-file)."),
    auth_file: str = typer.Option(None, "--auth-file", help="A file holding one line user:password (chmod 600); "
                                  "or set BACKPROPAGATE_UI__AUTH_FILE."),
) -> None:
    """Open the web UI: dataset inspection, training, multi-run, export and run history in the browser.

    Every file it reads or writes stays inside BACKPROPAGATE_UI__OUTPUT_DIR
    (default ~/.backpropagate/ui-outputs). Credentials: --auth, else --auth-file, else
    BACKPROPAGATE_UI__AUTH_FILE, else BACKPROPAGATE_UI__AUTH (user:password).
    """
    from ..logs import get_logger  # lazy: structlog (--help stays light)
    from ..ui import launch  # lazy: gradio

    if auth:
        get_logger().warning("auth_on_command_line", hint="other users of this machine can read --auth in the "
                             "process list; set BACKPROPAGATE_UI__AUTH or use --auth-file instead")
    launch(host=host, port=port, share=share, auth=auth, auth_file=auth_file)
