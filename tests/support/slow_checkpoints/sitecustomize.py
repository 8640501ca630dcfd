"""Imported at start-up by every Python process whose PYTHONPATH holds this folder (``faults.slow_checkpoints_env``):
checkpoint files are written slowly, so a test can kill the process in the middle of a checkpoint."""

import os
import time

_DELAY = float(os.environ.get("BACKPROPAGATE_TESTS_CHECKPOINT_DELAY") or 0)

if _DELAY:
    from backpropagate.training import checkpoints

    _write_file = checkpoints.write_file

    def _slow_write(path, writer):  # type: ignore[no-untyped-def]
        digest = _write_file(path, writer)
        time.sleep(_DELAY)
        return digest

    checkpoints.write_file = _slow_write
