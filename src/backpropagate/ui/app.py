"""The Gradio page: Dataset, Train, Multi-run, Export and Runs tabs over one :class:`Workspace`.

Only layout and wiring live here; every button calls a Workspace method. The current job is shown
above the tabs and refreshed by a ``gr.Timer`` from the server-side job state, so a job keeps running
when the tab closes and a reopened page shows where it is.

Each tab has a layout function (creates its components, returns them as a namespace) and a wiring
function (its handlers and events). All layouts run before any wiring because the Dataset tab's events
fill fields of later tabs, and the job-panel poll updates components of several tabs.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from ..export.quantize import QUANTIZATIONS
from ..presets import LORA_PRESETS, MODEL_PRESETS
from .views import RUN_COLUMNS, diff_text, error_markdown, job_markdown, loss_rows, run_text, runs_table
from .workspace import DATA_SUFFIXES, MAX_SEQ_LENGTH, METHODS, PRESET, Workspace

__all__ = ["build_app"]

POLL_SECONDS = 1.0
CSS = ".mono textarea { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace !important; }"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def _guard(fn: Callable[..., Any], n_outputs: int, error_at: int = 0) -> Callable[..., Any]:
    """Run a handler; a failure becomes ``[CODE]: message`` + hint in output ``error_at``."""
    import gradio as gr

    def wrapper(*args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - every failure is shown on the page, coded
            outputs = [gr.skip()] * n_outputs
            outputs[error_at] = error_markdown(exc)
            return outputs[0] if n_outputs == 1 else tuple(outputs)

    return wrapper


def _run_choices(ws: Workspace, completed_only: bool = False) -> list[tuple[str, str]]:
    """Dropdown choices for the runs in ``ws``: a readable label, the run id as value."""
    return [(f"{r.run_id[:8]} · {r.status} · {r.completed_steps}/{r.steps} steps", r.run_id)
            for r in ws.list_runs() if not completed_only or r.status == "completed"]


def build_app(ws: Workspace) -> Any:
    """The Blocks app for ``ws`` (not launched)."""
    import gradio as gr

    models = list(dict.fromkeys([ws.default_model, *(p.key for p in MODEL_PRESETS)]))
    with gr.Blocks(title="backpropagate", analytics_enabled=False) as demo:
        gr.Markdown(f"# backpropagate\nFine-tune, compare and export. Files are read and written only inside "
                    f"the sandbox `{ws.root}`.")
        panel = _job_panel_layout()
        with gr.Tabs():
            ds = _dataset_layout(ws, models)
            tr = _train_layout(ws, models)
            mr = _multi_run_layout(ws, models)
            ex = _export_layout(ws)
            rn = _runs_layout(ws)
        seen = gr.State(None)
        timer = gr.Timer(POLL_SECONDS)
        _wire_dataset(ws, ds, tr, mr)
        _wire_train(ws, tr)
        _wire_multi_run(ws, mr)
        _wire_export(ws, ex)
        _wire_runs(ws, rn)
        _wire_job_panel(ws, demo, panel, ds, mr, ex, rn, seen, timer)
    return demo


# ---- layout: one function per page section; each returns its components ---------------------------

def _job_panel_layout() -> SimpleNamespace:
    """The live job panel above the tabs, so progress is visible whichever tab is open."""
    import gradio as gr
    import pandas as pd

    empty_losses = pd.DataFrame({"step": [], "loss": [], "series": []})
    with gr.Group():
        job_md = gr.Markdown(elem_id="job-status")
        with gr.Row():
            stop_btn = gr.Button("Stop the job", variant="stop", elem_id="stop-job", scale=0, visible=False)
            stop_md = gr.Markdown(elem_id="stop-status")
        loss_plot = gr.LinePlot(empty_losses, x="step", y="loss", color="series", title="training and eval loss",
                                height=260, visible=False, elem_id="loss-plot")
        job_log = gr.Textbox(label="Job log", lines=3, max_lines=8, interactive=False, elem_id="job-log",
                             elem_classes=["mono"], visible=False)  # both shown by the poll when a job has them
    return SimpleNamespace(job_md=job_md, stop_btn=stop_btn, stop_md=stop_md, loss_plot=loss_plot, job_log=job_log)


def _dataset_layout(ws: Workspace, models: list[str]) -> SimpleNamespace:
    """The Dataset tab: upload, then inspect a file rendered with the model's chat template."""
    import gradio as gr

    with gr.Tab("Dataset", id="dataset"):
        upload = gr.File(label="Upload a dataset (" + ", ".join(DATA_SUFFIXES) + ")",
                         file_types=list(DATA_SUFFIXES), elem_id="upload")
        with gr.Row():
            path = gr.Textbox(label="Dataset path (relative to the sandbox)", elem_id="dataset-path")
            model = gr.Dropdown(models, value=ws.default_model, allow_custom_value=True,
                                label="Model (for its chat template)", elem_id="dataset-model")
        load = gr.Button("Inspect", variant="primary", elem_id="dataset-load")
        status = gr.Markdown(elem_id="dataset-status")
        preview = gr.HighlightedText(label="Rendered with the chat template; trained tokens highlighted",
                                     color_map={"trained": "green"}, show_legend=True,
                                     combine_adjacent=True, elem_id="dataset-preview")
        report = gr.Textbox(label="Data report", lines=12, interactive=False, elem_id="dataset-report",
                            elem_classes=["mono"])
        files = gr.Markdown(elem_id="dataset-files")
    return SimpleNamespace(upload=upload, path=path, model=model, load=load, status=status, preview=preview,
                           report=report, files=files)


def _train_layout(ws: Workspace, models: list[str]) -> SimpleNamespace:
    """The Train tab: one fine-tuning run, with its memory plan."""
    import gradio as gr

    with gr.Tab("Train", id="train"):
        with gr.Row():
            model = gr.Dropdown(models, value=ws.default_model, allow_custom_value=True,
                                label="Model (preset, hub id or folder in the sandbox)", elem_id="train-model")
            data = gr.Textbox(label="Dataset path (relative to the sandbox)", elem_id="train-data")
        with gr.Row():
            preset = gr.Radio(list(LORA_PRESETS), value=PRESET, label="LoRA preset")
            method = gr.Radio(list(METHODS), value="LoRA", label="Method")
        with gr.Row():
            steps = gr.Number(100, label="Steps", precision=0, elem_id="train-steps")
            lr = gr.Textbox("", label="Learning rate (empty: the preset's)", elem_id="train-lr")
            seq = gr.Number(MAX_SEQ_LENGTH, label="Sequence length", precision=0, elem_id="train-seq")
            held_out = gr.Number(0, label="Held-out share (0: automatic, 5 % of 1000+ rows)",
                                 elem_id="train-eval-fraction")
        with gr.Row():
            plan_btn = gr.Button("Memory plan", elem_id="train-plan")
            start = gr.Button("Start training", variant="primary", elem_id="train-start")
        status = gr.Markdown(elem_id="train-status")
        plan = gr.Textbox(label="Memory plan", lines=12, interactive=False, elem_id="train-plan-text",
                          elem_classes=["mono"])
    return SimpleNamespace(model=model, data=data, preset=preset, method=method, steps=steps, lr=lr, seq=seq,
                           held_out=held_out, plan_btn=plan_btn, start=start, status=status, plan=plan)


def _multi_run_layout(ws: Workspace, models: list[str]) -> SimpleNamespace:
    """The Multi-run tab: a campaign of runs and its forgetting report."""
    import gradio as gr

    with gr.Tab("Multi-run", id="multi-run"):
        data = gr.Textbox(label="Datasets, one path per line (one file: cut into runs)", lines=3,
                          elem_id="multi-data")
        with gr.Row():
            runs = gr.Number(3, label="Runs (one file)", precision=0)
            samples = gr.Number(0, label="Samples per run (0: all rows evenly)", precision=0)
            steps = gr.Number(20, label="Steps per run", precision=0)
        with gr.Row():
            model = gr.Dropdown(models, value=ws.default_model, allow_custom_value=True, label="Model")
            preset = gr.Radio(list(LORA_PRESETS), value="fast", label="LoRA preset")
            seq = gr.Number(1024, label="Sequence length", precision=0)
        start = gr.Button("Start multi-run", variant="primary", elem_id="multi-start")
        status = gr.Markdown(elem_id="multi-status")
        table = gr.Textbox(label="Forgetting report", lines=10, interactive=False, elem_id="multi-report",
                           elem_classes=["mono"])
        heat = gr.Image(label="Forgetting heat-map", type="filepath", interactive=False)
    return SimpleNamespace(data=data, runs=runs, samples=samples, steps=steps, model=model, preset=preset,
                           seq=seq, start=start, status=status, table=table, heat=heat)


def _export_layout(ws: Workspace) -> SimpleNamespace:
    """The Export tab: a completed run to GGUF or merged weights, optionally into Ollama."""
    import gradio as gr

    with gr.Tab("Export", id="export"):
        with gr.Row():
            run = gr.Dropdown(_run_choices(ws, True), label="Completed run", elem_id="export-run")
            refresh = gr.Button("Refresh", scale=0)
        with gr.Row():
            fmt = gr.Radio(["gguf", "gguf-adapter", "merged"], value="gguf", label="Format")
            quant = gr.Dropdown(list(QUANTIZATIONS), value="q4_k_m", label="Quantization", elem_id="export-quant")
        with gr.Row():
            overwrite = gr.Checkbox(False, label="Replace an existing export")
            ollama = gr.Checkbox(False, label="Register with Ollama")
            name = gr.Textbox("", label="Ollama model name")
        start = gr.Button("Export", variant="primary", elem_id="export-start")
        status = gr.Markdown(elem_id="export-status")
        parity = gr.Textbox(label="Parity check", lines=9, interactive=False, elem_id="export-parity",
                            elem_classes=["mono"])
        file = gr.File(label="Download", interactive=False, elem_id="export-file")
    return SimpleNamespace(run=run, refresh=refresh, fmt=fmt, quant=quant, overwrite=overwrite, ollama=ollama,
                           name=name, start=start, status=status, parity=parity, file=file)


def _runs_layout(ws: Workspace) -> SimpleNamespace:
    """The Runs tab: the run table, one run's details, a diff of two runs."""
    import gradio as gr

    with gr.Tab("Runs", id="runs"):
        refresh = gr.Button("Refresh", elem_id="runs-refresh")
        table = gr.Dataframe(headers=RUN_COLUMNS, value=runs_table(ws.list_runs(), ws.root),
                             interactive=False, wrap=True, elem_id="runs-table")
        with gr.Row():
            run_id = gr.Textbox(label="Run id (or its first characters)", elem_id="runs-id")
            show = gr.Button("Show", elem_id="runs-show")
            resume = gr.Button("Resume", elem_id="runs-resume")
        status = gr.Markdown(elem_id="runs-status")
        with gr.Row():
            details = gr.Textbox(label="Details", lines=14, interactive=False, elem_id="runs-details",
                                 elem_classes=["mono"])
            plot = gr.Image(label="Loss", type="filepath", interactive=False)
        with gr.Row():
            a = gr.Textbox(label="Run A", elem_id="runs-diff-a")
            b = gr.Textbox(label="Run B", elem_id="runs-diff-b")
            diff_btn = gr.Button("Diff", elem_id="runs-diff")
        diff = gr.Textbox(label="Differences", lines=10, interactive=False, elem_id="runs-diff-text",
                          elem_classes=["mono"])
        diff_plot = gr.Image(label="Losses", type="filepath", interactive=False)
    return SimpleNamespace(refresh=refresh, table=table, run_id=run_id, show=show, resume=resume, status=status,
                           details=details, plot=plot, a=a, b=b, diff_btn=diff_btn, diff=diff, diff_plot=diff_plot)


# ---- wiring: handlers and events, registered in page order ------------------------------------------

def _files_markdown_fn(ws: Workspace) -> Callable[[], str]:
    """The sandbox file list as Markdown; named ``files_markdown`` since Gradio derives its API name from it."""

    def files_markdown() -> str:
        files = ws.list_files()
        return "Files in the sandbox: " + (", ".join(f"`{f}`" for f in files) if files else "none yet")

    return files_markdown


def _wire_dataset(ws: Workspace, ds: SimpleNamespace, tr: SimpleNamespace, mr: SimpleNamespace) -> None:
    """Upload and inspect; the inspected path also fills the Train and Multi-run dataset fields."""
    import gradio as gr

    files_markdown = _files_markdown_fn(ws)

    def on_upload(file: Any) -> tuple[Any, ...]:
        if not file:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        rel = ws.save_upload(file)
        return rel, f"uploaded to `{rel}`", files_markdown(), rel, rel

    def on_inspect(path: str, model: str) -> tuple[Any, ...]:
        view = ws.inspect_dataset(path, model)
        status = (f"**File:** `{view['path']}` · **Format:** {view['format']} ({view['reason']}) · **Rows:** {view['rows']} · "
                  f"trained tokens in the preview: {view['trained_tokens']}/{view['preview_tokens']}")
        status += "".join(f"\n\n*Note:* {note}" for note in view["notes"])
        return status, view["preview"], view["report"], view["path"], view["path"]

    inspect_outputs = [ds.status, ds.preview, ds.report, tr.data, mr.data]
    ds.upload.upload(_guard(on_upload, 5, 1), [ds.upload], [ds.path, ds.status, ds.files, tr.data, mr.data]).then(
        _guard(on_inspect, 5), [ds.path, ds.model], inspect_outputs)
    ds.load.click(_guard(on_inspect, 5), [ds.path, ds.model], inspect_outputs)


def _wire_train(ws: Workspace, tr: SimpleNamespace) -> None:
    """Memory plan and start training; starting also shows the plan it runs under."""

    def form(model: str, preset: str, method: str, lr: str, seq: Any) -> dict[str, Any]:
        return {"model": model, "preset": preset, "method": method, "learning_rate": lr, "max_seq_length": seq}

    def on_plan(model: str, preset: str, method: str, lr: str, seq: Any) -> tuple[Any, ...]:
        return "", ws.plan_text(**form(model, preset, method, lr, seq))

    def on_train(model: str, data: str, preset: str, method: str, steps: Any, lr: str, seq: Any,
                 held_out: Any) -> tuple[Any, ...]:
        fields = form(model, preset, method, lr, seq)
        plan = ws.plan_text(**fields)
        output = ws.start_training(dataset=data, steps=steps, eval_fraction=held_out, **fields)
        return f"training started; output `{output}` (progress above)", plan

    tr.plan_btn.click(_guard(on_plan, 2), [tr.model, tr.preset, tr.method, tr.lr, tr.seq], [tr.status, tr.plan])
    tr.start.click(_guard(on_train, 2), [tr.model, tr.data, tr.preset, tr.method, tr.steps, tr.lr, tr.seq,
                                         tr.held_out], [tr.status, tr.plan])


def _wire_multi_run(ws: Workspace, mr: SimpleNamespace) -> None:
    """Start a campaign; its report and heat-map arrive through the job-panel poll."""

    def on_multi(data: str, runs_n: Any, samples: Any, steps: Any, model: str, preset: str, seq: Any) -> str:
        output = ws.start_multi_run(datasets=data, num_runs=runs_n, steps_per_run=steps, samples_per_run=samples,
                                    model=model, preset=preset, max_seq_length=seq)
        return f"multi-run started; output `{output}` (progress above)"

    mr.start.click(_guard(on_multi, 1), [mr.data, mr.runs, mr.samples, mr.steps, mr.model, mr.preset, mr.seq],
                   [mr.status])


def _wire_export(ws: Workspace, ex: SimpleNamespace) -> None:
    """Start an export; parity and the download arrive through the job-panel poll."""
    import gradio as gr

    def on_export(run_id: str, fmt: str, quant: str, overwrite: bool, ollama: bool, name: str) -> str:
        ws.start_export(run_id or "", format=fmt, quantization=quant, ollama=ollama, ollama_name=name,
                        overwrite=overwrite)
        return "export started (progress above)"

    ex.start.click(_guard(on_export, 1), [ex.run, ex.fmt, ex.quant, ex.overwrite, ex.ollama, ex.name],
                   [ex.status])
    ex.refresh.click(lambda: gr.update(choices=_run_choices(ws, True)), None, [ex.run])


def _wire_runs(ws: Workspace, rn: SimpleNamespace) -> None:
    """Refresh, show, diff and resume runs."""

    def on_show(run_id: str) -> tuple[Any, ...]:
        record = ws.get_run(run_id)
        return "", run_text(record), ws.plot({record.run_id[:8]: record.loss_history}, f"run-{record.run_id[:8]}")

    def on_diff(a: str, b: str) -> tuple[Any, ...]:
        d = ws.diff_runs(a, b)
        plot = ws.plot({d.a.run_id[:8]: d.a.loss_history, d.b.run_id[:8]: d.b.loss_history},
                       f"diff-{d.a.run_id[:8]}-{d.b.run_id[:8]}")
        return "", diff_text(d), plot

    def on_resume(run_id: str) -> str:
        rid = ws.start_resume(run_id)
        return f"resuming run `{rid[:8]}` (progress above)"

    rn.refresh.click(lambda: runs_table(ws.list_runs(), ws.root), None, [rn.table])
    rn.show.click(_guard(on_show, 3), [rn.run_id], [rn.status, rn.details, rn.plot])
    rn.diff_btn.click(_guard(on_diff, 3), [rn.a, rn.b], [rn.status, rn.diff, rn.diff_plot])
    rn.resume.click(_guard(on_resume, 1), [rn.run_id], [rn.status])


def _wire_job_panel(ws: Workspace, demo: Any, panel: SimpleNamespace, ds: SimpleNamespace, mr: SimpleNamespace,
                    ex: SimpleNamespace, rn: SimpleNamespace, seen: Any, timer: Any) -> None:
    """Stop button, and the poll that mirrors the server-side job state into the page (timer and page load)."""
    poll_outputs = [panel.job_md, panel.loss_plot, panel.job_log, ex.parity, ex.file, mr.table, mr.heat, rn.table,
                    ex.run, panel.stop_btn, seen]

    def on_stop() -> str:
        return "stopping after the current step…" if ws.runner.stop() else "no job is running"

    panel.stop_btn.click(on_stop, None, [panel.stop_md])
    poll = _poll_fn(ws, len(poll_outputs))
    timer.tick(poll, [seen], poll_outputs)
    demo.load(poll, [seen], poll_outputs).then(_files_markdown_fn(ws), None, [ds.files])


def _poll_fn(ws: Workspace, n_outputs: int) -> Callable[[Any], tuple[Any, ...]]:
    """The poll handler: skips every output while the job is unchanged, so an idle page sends nothing."""
    import gradio as gr
    import pandas as pd

    def poll(last: Any) -> tuple[Any, ...]:
        state = ws.runner.snapshot()
        key = (state.started_at, state.status, len(state.metrics), len(state.log))
        if key == last:
            return tuple(gr.skip() for _ in range(n_outputs))
        rows = loss_rows(state)
        plot = gr.update(visible=False)
        if rows:  # an explicit colour per series, so a campaign's later runs join the chart's legend
            series = list(dict.fromkeys(r["series"] for r in rows))
            colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(series)}
            plot = gr.update(value=pd.DataFrame(rows), color_map=colors, visible=True)
        result = state.result
        finished = last is None or last[:2] != key[:2]
        skip = gr.skip()
        parity = result.get("parity", skip) if state.kind == "export" else skip
        download = result.get("download") if state.kind == "export" and state.status == "completed" else skip
        table = result.get("forgetting", skip)
        heat = result.get("heatmap") or skip
        runs_rows = runs_table(ws.list_runs(), ws.root) if finished else skip
        export_runs = skip
        if finished:
            choices = _run_choices(ws, True)
            newest = result.get("run_id") if state.status == "completed" and state.kind != "export" else None
            export_runs = gr.update(choices=choices, value=newest) if newest else gr.update(choices=choices)
        log = gr.update(value="\n".join(state.log), visible=bool(state.log))  # no empty log box before a job
        return (job_markdown(state), plot, log, parity, download, table, heat, runs_rows, export_runs,
                gr.update(visible=state.running), key)  # Stop only while a job runs

    return poll
