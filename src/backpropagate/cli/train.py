"""``backprop train`` and ``backprop demo``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import typer

from ..option_docs import OPTION_DOCS as DOC
from . import app


@app.command()
def train(
    data: str = typer.Option(..., "--data", "-d", help="Dataset file, save_to_disk folder or hub dataset name."),
    model: str = typer.Option(None, "--model", "-m", help=DOC["model"] + " [default: Qwen/Qwen2.5-7B-Instruct]"),
    steps: int = typer.Option(None, "--steps", "-s", help="Optimizer steps to train [default: 100; with "
                              "--resume, the run's own]."),
    output: Path = typer.Option(None, "--output", "-o", help=DOC["output_dir"] + " [default: ./output]"),
    lora_preset: str = typer.Option(None, help=DOC["lora_preset"] + " [default: quality]"),
    lora_r: int = typer.Option(None, help=DOC["lora_r"] + " [default: 256]"),
    lora_alpha: float = typer.Option(None, help=DOC["lora_alpha"] + " [default: 512]"),
    target_modules: str = typer.Option(None, help=DOC["target_modules"] + " Comma-separated names "
                                       "[default: all-linear]."),
    lora_dropout: float = typer.Option(None, help=DOC["lora_dropout"] + " [default: 0.05]"),
    learning_rate: float = typer.Option(None, "--learning-rate", "--lr", help=DOC["learning_rate"] + " [default: 2e-3 under the quality preset]"),
    mode: str = typer.Option(None, "--mode", help=DOC["mode"] + " [default: lora]"),
    use_dora: bool = typer.Option(None, "--use-dora/--no-dora", help=DOC["use_dora"] + " [default: off]"),
    init_lora_weights: str = typer.Option(None, help=DOC["init_lora_weights"] + " [default: default]"),
    load_in_4bit: bool = typer.Option(None, "--load-in-4bit/--no-4bit", help=DOC["load_in_4bit"] + " [default: off]"),
    optim: str = typer.Option(None, "--optim", help=DOC["optim"] + " [default: auto]"),
    gradient_checkpointing: str = typer.Option(None, help=DOC["gradient_checkpointing"] + " on, off or auto "
                                               "[default: auto]."),
    use_unsloth: bool = typer.Option(None, "--use-unsloth/--no-unsloth", help=DOC["use_unsloth"] + " [default: on]"),
    unsloth_fallback: bool = typer.Option(None, "--unsloth-fallback/--no-unsloth-fallback",
                                          help=DOC["unsloth_fallback"] + " [default: on]"),
    batch_size: str = typer.Option(None, help=DOC["batch_size"] + " [default: auto]"),
    gradient_accumulation: int = typer.Option(None, help=DOC["gradient_accumulation"] + " [default: 4]"),
    max_seq_length: int = typer.Option(None, help=DOC["max_seq_length"] + " [default: 2048]"),
    train_on_responses: bool = typer.Option(None, "--train-on-responses/--train-on-all",
                                            help=DOC["train_on_responses"] + " [default: responses]"),
    packing: bool = typer.Option(None, "--packing/--no-packing", help=DOC["packing"] + " [default: packing]"),
    chunked_loss: bool = typer.Option(None, "--chunked-loss/--no-chunked-loss",
                                      help=DOC["chunked_loss"] + " [default: auto]"),
    memory_check: str = typer.Option(None, "--memory-check", help=DOC["memory_check"] + " [default: refuse]"),
    seed: int = typer.Option(None, help=DOC["seed"] + " [default: 42]"),
    format: str = typer.Option(None, "--format", help="Force the dataset format: sharegpt, alpaca, openai, chatml, text."),
    text_column: str = typer.Option(None, help="Column holding raw or ChatML text [default: text]."),
    curriculum: bool = typer.Option(False, "--curriculum", help="Train easy to hard without shuffling: the "
                                    "rows' difficulty column (backprop data curriculum), else a length score."),
    trust_remote_code: bool = typer.Option(None, "--trust-remote-code/--no-trust-remote-code",
                                           help=DOC["trust_remote_code"] + " [default: off]"),
    save_steps: int = typer.Option(None, help=DOC["save_steps"] + " [default: 50]"),
    keep_checkpoints: int = typer.Option(None, help=DOC["keep_checkpoints"] + " [default: 2]"),
    oom_recovery: bool = typer.Option(None, "--oom-recovery/--no-oom-recovery",
                                      help=DOC["oom_recovery"] + " [default: on]"),
    resume: str = typer.Option(None, "--resume", help="Continue this interrupted run (id or unique prefix) "
                               "from its last checkpoint, bit for bit; see also `backprop resume`."),
    force: bool = typer.Option(False, "--force", help="With --resume: continue even if the data or settings "
                               "differ from the run's."),
    report_to: str = typer.Option(None, "--report-to", help=DOC["report_to"] + " [default: auto]"),
    nproc: int = typer.Option(None, "--nproc", help="Train on this many processes per machine (torchrun; one "
                              "per GPU, or CPU processes with gloo) [default: 1]."),
    nnodes: int = typer.Option(1, "--nnodes", help="Machines taking part (with --nproc)."),
    node_rank: int = typer.Option(0, "--node-rank", help="This machine's index, 0 .. nnodes-1."),
    master_addr: str = typer.Option(None, "--master-addr", help="Address of node 0 (with --nnodes > 1)."),
    master_port: int = typer.Option(None, "--master-port", help="Port on node 0 [default: 29500]."),
    fsdp: bool = typer.Option(False, "--fsdp", help="Shard weights, gradients and optimizer state across the "
                              "processes (PyTorch FSDP, one decoder layer at a time) instead of DDP."),
    deepspeed: Path = typer.Option(None, "--deepspeed", help=DOC["deepspeed_config"]),
    zero: int = typer.Option(None, "--zero", help=DOC["zero_stage"]),
) -> None:
    """Fine-tune a LoRA adapter on a dataset and save it to <output>/lora (--mode full: <output>/model)."""
    import os
    import sys

    from ..trainer import Trainer
    from .progress import TrainingProgress

    trainer = Trainer(
        model, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, learning_rate=learning_rate,
        batch_size=batch_size, gradient_accumulation=gradient_accumulation, max_seq_length=max_seq_length,
        output_dir=output, train_on_responses=train_on_responses, packing=packing, seed=seed,
        chunked_loss=chunked_loss, memory_check=memory_check,
        trust_remote_code=trust_remote_code, save_steps=save_steps, keep_checkpoints=keep_checkpoints,
        oom_recovery=oom_recovery, lora_preset=lora_preset, target_modules=target_modules, mode=mode,
        use_dora=use_dora, init_lora_weights=init_lora_weights, load_in_4bit=load_in_4bit, optim=optim,
        gradient_checkpointing=_on_off_auto(gradient_checkpointing), use_unsloth=use_unsloth,
        unsloth_fallback=unsloth_fallback, report_to=report_to, strategy="fsdp" if fsdp else None,
        deepspeed_config=deepspeed, zero_stage=zero)
    if nproc is not None:
        from ..training.parallel import check_nproc

        check_nproc(nproc)
    launching = (nproc or 1) > 1 or nnodes > 1
    if launching and int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # not yet under a launcher: become one
        from .launch import launch

        raise typer.Exit(launch(sys.argv[1:], nproc=nproc or 1, nnodes=nnodes, node_rank=node_rank,
                                master_addr=master_addr, master_port=master_port))
    with interruptible(trainer), TrainingProgress(steps, enabled=os.environ.get("RANK", "0") == "0") as progress:
        run = trainer.train(data, steps=steps, callback=progress.callback(), format=format,
                            text_column=text_column, curriculum=curriculum, resume=resume, force=force)
    if os.environ.get("RANK", "0") != "0":
        return  # the other ranks of a multi-process run: rank 0 reports
    typer.echo(f"run_id: {run.run_id}")
    typer.echo(f"steps: {run.steps}  final loss: {run.final_loss:.4f}  "
               f"(first {run.loss_history[0]:.4f})  {run.duration_seconds:.1f}s")
    typer.echo(f"adapter: {run.output_path}")


@contextmanager
def interruptible(trainer: Any) -> Iterator[None]:
    """Ctrl-C stops the run after its current step with a checkpoint (twice: at once); an interrupted run
    prints the command that resumes it and exits 130. Multi-process runs keep the launcher's handling."""
    import os

    from ..training.stop import RunInterrupted, stop_on_sigint

    graceful = stop_on_sigint(trainer.stop) if int(os.environ.get("WORLD_SIZE", "1")) <= 1 else nullcontext()
    try:
        with graceful:
            yield
    except RunInterrupted as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(130) from None


def _on_off_auto(value: str | None) -> bool | str | None:
    """CLI spelling of a bool-or-"auto" option; anything else is passed on for the coded error."""
    if value is None:
        return None
    return {"on": True, "true": True, "off": False, "false": False}.get(value.strip().lower(), value)


@app.command()
def demo(
    output: Path = typer.Option(Path("./output/demo"), "--output", "-o", help="Where the demo writes."),
    steps: int = typer.Option(None, help="Optimizer steps [default: the demo's tuned value]."),
) -> None:
    """Offline end-to-end demo: build a tiny llama, fine-tune it on the quickstart data, chat with it."""
    from ..demo import run_demo
    from .progress import TrainingProgress

    with TrainingProgress(None) as progress:
        result = run_demo(output, steps=steps, callback=progress.callback(), on_start=progress.set_total)
    typer.echo(f"run_id: {result.run.run_id}")
    typer.echo(f"loss: {result.run.loss_history[0]:.3f} -> {result.run.final_loss:.3f} "
               f"in {result.run.steps} steps ({result.run.duration_seconds:.0f}s)")
    typer.echo(f"adapter: {result.run.output_path}")
    typer.echo(f"question: {result.question}")
    typer.echo(f"expected: {result.expected}")
    typer.echo(f"tuned:    {result.answer}")
    typer.echo("match: yes" if result.matches else "match: no")
    if result.gguf is None:
        typer.echo('gguf: skipped (pip install "backpropagate[export]" to export and chat with llama.cpp)')
        return
    report = result.gguf.report
    typer.echo(f"gguf: {result.gguf.path} (q4_k_m; top-1 agreement with PyTorch "
               f"{report.agreement:.1%}, parity {'passed' if report.passed else 'FAILED'})")
    typer.echo(f"llama.cpp: {result.gguf_answer}")
