"""``backprop ui``: a thin shell over ``backpropagate.ui.launch`` (gradio is imported only when it runs)."""

from __future__ import annotations

import typer

from . import app


@app.command("ui")
def ui(
    port: int = typer.Option(7862, "--port", help="Port to serve the web UI on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; anything but loopback "
                             "needs --auth."),
    share: bool = typer.Option(False, "--share", help="Also publish a temporary public Gradio link "
                               "(needs --auth)."),
    auth: str = typer.Option(None, "--auth", help="user:password required to open the page (never logged)."),
) -> None:
    """Open the web UI: dataset inspection, training, multi-run, export and run history in the browser.

    Every file it reads or writes stays inside BACKPROPAGATE_UI__OUTPUT_DIR
    (default ~/.backpropagate/ui-outputs).
    """
    from ..ui import launch

    launch(host=host, port=port, share=share, auth=auth)
