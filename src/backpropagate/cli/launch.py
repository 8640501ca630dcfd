"""``backprop train --nproc N``: start the same command on N processes (per node) through torchrun.

torchrun (``torch.distributed.run``) owns process start-up, rendezvous and failure handling; this module
only builds its command line: the user's own arguments minus the launcher options, and ``--standalone``
for a single machine or the rendezvous flags for several.
"""

from __future__ import annotations

import subprocess
import sys

LAUNCHER_OPTIONS = {"--nproc": True, "--nnodes": True, "--node-rank": True, "--master-addr": True,
                    "--master-port": True}


def strip_launcher_options(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` and the rendezvous options (also in ``--opt=value`` form)."""
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
            continue
        name = word.split("=", 1)[0]
        if name in LAUNCHER_OPTIONS:
            skip = "=" not in word
            continue
        out.append(word)
    return out


def torchrun_command(argv: list[str], *, nproc: int, nnodes: int, node_rank: int, master_addr: str | None,
                     master_port: int | None) -> list[str]:
    """The torchrun command that runs ``backprop <argv>`` on every rank."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    if nnodes > 1:
        command += ["--nnodes", str(nnodes), "--node_rank", str(node_rank),
                    "--master_addr", master_addr or "127.0.0.1", "--master_port", str(master_port or 29500)]
    else:
        command += ["--standalone"]
    return [*command, "-m", "backpropagate.cli", *strip_launcher_options(argv)]


def launch(argv: list[str], **rendezvous: object) -> int:
    """Run torchrun in the foreground and return its exit status (the first failing rank's)."""
    return subprocess.call(torchrun_command(argv, **rendezvous))  # type: ignore[arg-type]
