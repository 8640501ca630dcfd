"""Peak RSS of real training steps against the memory plan; run as a script in a fresh process.

    python tests/rss_probe.py MODEL_DIR DATA.jsonl OUT_DIR SEQ_LEN CONFIG_JSON [CONFIG_JSON ...]

For each config (Trainer arguments) it trains 2 optimizer steps of 2 micro-batches of one full row,
and prints one JSON line: the plan's estimate and the measured increase of peak RSS over the RSS
before the model was loaded. The peak of step 2 is the steady state the plan describes (optimizer
states exist, gradients accumulate while a micro-batch's activations are alive), so the kernel's
peak-RSS counter is reset after step 1 (``/proc/self/clear_refs``) and read after step 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from support.memory import proc_status_bytes, settle_memory


def measure(model_dir: str, data: str, out: str, seq_len: int, extra: dict) -> dict:
    from backpropagate import Trainer, TrainingCallback

    trainer = Trainer(model_dir, batch_size=1, gradient_accumulation=2, max_seq_length=seq_len, warmup_ratio=0.0,
                      output_dir=out, save_steps=0, **extra)
    plan = trainer.plan(seq_len=seq_len, batch_size=1)
    settle_memory()
    baseline = proc_status_bytes("VmRSS")
    peak: dict[str, int] = {}

    def on_step(step: int, loss: float) -> None:
        if step == 1:
            settle_memory()
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        elif step == 2:
            peak["hwm"] = proc_status_bytes("VmHWM")

    trainer.train(data, steps=2, callback=TrainingCallback(on_step=on_step))
    result = {"config": extra, "measured": peak["hwm"] - baseline, "plan": plan.total_bytes,
              "components": plan.components}
    del trainer
    settle_memory()
    return result


def main() -> None:
    model_dir, data, out, seq_len = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    # Import what training imports lazily, so the baseline already holds the libraries.
    import peft  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import Trainer  # noqa: F401

    import backpropagate.data  # noqa: F401
    import backpropagate.training.engine  # noqa: F401
    import backpropagate.training.loader  # noqa: F401

    for i, config in enumerate(sys.argv[5:]):
        print(json.dumps(measure(model_dir, data, f"{out}/{i}", seq_len, json.loads(config))), flush=True)


if __name__ == "__main__":
    main()
