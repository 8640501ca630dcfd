"""The Gradio page: Dataset, Train, Multi-run, Export and Runs tabs over one :class:`Workspace`.

Only layout and wiring live here; every button calls a Workspace method. The current job is shown
above the tabs and refreshed by a ``gr.Timer`` from the server-side job state, so a job keeps running
when the tab closes and a reopened page shows where it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .views import RUN_COLUMNS, error_markdown, job_markdown, loss_rows, run_text, runs_table
from .workspace import DATA_SUFFIXES, METHODS, Workspace

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


def build_app(ws: Workspace) -> Any:
    """The Blocks app for ``ws`` (not launched)."""
    import gradio as gr
    import pandas as pd

    from ..export.quantize import QUANTIZATIONS
    from ..presets import LORA_PRESETS, MODEL_PRESETS

    models = list(dict.fromkeys([ws.default_model, *(p.key for p in MODEL_PRESETS)]))
    empty_losses = pd.DataFrame({"step": [], "loss": [], "series": []})

    def run_choices(completed_only: bool = False) -> list[tuple[str, str]]:
        return [(f"{r.run_id[:8]} · {r.status} · {r.completed_steps}/{r.steps} steps", r.run_id)
                for r in ws.list_runs() if not completed_only or r.status == "completed"]

    with gr.Blocks(title="backpropagate", analytics_enabled=False) as demo:
        gr.Markdown(f"# backpropagate\nFine-tune, compare and export. Files are read and written only inside "
                    f"the sandbox `{ws.root}`.")
        with gr.Group():
            job_md = gr.Markdown(elem_id="job-status")
            with gr.Row():
                stop_btn = gr.Button("Stop the job", variant="stop", elem_id="stop-job", scale=0)
                stop_md = gr.Markdown(elem_id="stop-status")
            loss_plot = gr.LinePlot(empty_losses, x="step", y="loss", color="series", title="training loss",
                                    height=260, visible=False, elem_id="loss-plot")
            job_log = gr.Textbox(label="Job log", lines=3, max_lines=8, interactive=False, elem_id="job-log",
                                        elem_classes=["mono"])

        with gr.Tabs():
            with gr.Tab("Dataset", id="dataset"):
                upload = gr.File(label="Upload a dataset (" + ", ".join(DATA_SUFFIXES) + ")",
                                 file_types=list(DATA_SUFFIXES), elem_id="upload")
                with gr.Row():
                    ds_path = gr.Textbox(label="Dataset path (relative to the sandbox)", elem_id="dataset-path")
                    ds_model = gr.Dropdown(models, value=ws.default_model, allow_custom_value=True,
                                           label="Model (for its chat template)", elem_id="dataset-model")
                ds_load = gr.Button("Inspect", variant="primary", elem_id="dataset-load")
                ds_status = gr.Markdown(elem_id="dataset-status")
                ds_preview = gr.HighlightedText(label="Rendered with the chat template; trained tokens highlighted",
                                                color_map={"trained": "green"}, show_legend=True,
                                                combine_adjacent=True, elem_id="dataset-preview")
                ds_report = gr.Textbox(label="Data report", lines=12, interactive=False, elem_id="dataset-report",
                                        elem_classes=["mono"])
                ds_files = gr.Markdown(elem_id="dataset-files")

            with gr.Tab("Train", id="train"):
                with gr.Row():
                    tr_model = gr.Dropdown(models, value=ws.default_model, allow_custom_value=True,
                                           label="Model (preset, hub id or folder in the sandbox)", elem_id="train-model")
                    tr_data = gr.Textbox(label="Dataset path (relative to the sandbox)", elem_id="train-data")
                with gr.Row():
                    tr_preset = gr.Radio(list(LORA_PRESETS), value="quality", label="LoRA preset")
                    tr_method = gr.Radio(list(METHODS), value="LoRA", label="Method")
                with gr.Row():
                    tr_steps = gr.Number(100, label="Steps", precision=0, elem_id="train-steps")
                    tr_lr = gr.Textbox("", label="Learning rate (empty: the preset's)", elem_id="train-lr")
                    tr_seq = gr.Number(2048, label="Sequence length", precision=0, elem_id="train-seq")
                with gr.Row():
                    tr_plan_btn = gr.Button("Memory plan", elem_id="train-plan")
                    tr_start = gr.Button("Start training", variant="primary", elem_id="train-start")
                tr_status = gr.Markdown(elem_id="train-status")
                tr_plan = gr.Textbox(label="Memory plan", lines=12, interactive=False, elem_id="train-plan-text",
                                        elem_classes=["mono"])

            with gr.Tab("Multi-run", id="multi-run"):
                mr_data = gr.Textbox(label="Datasets, one path per line (one file: cut into runs)", lines=3,
                                     elem_id="multi-data")
                with gr.Row():
                    mr_runs = gr.Number(3, label="Runs (one file)", precision=0)
                    mr_samples = gr.Number(0, label="Samples per run (0: all rows evenly)", precision=0)
                    mr_steps = gr.Number(20, label="Steps per run", precision=0)
                with gr.Row():
                    mr_model = gr.Dropdown(models, value=ws.default_model, allow_custom_value=True, label="Model")
                    mr_preset = gr.Radio(list(LORA_PRESETS), value="fast", label="LoRA preset")
                    mr_seq = gr.Number(1024, label="Sequence length", precision=0)
                mr_start = gr.Button("Start multi-run", variant="primary", elem_id="multi-start")
                mr_status = gr.Markdown(elem_id="multi-status")
                mr_table = gr.Textbox(label="Forgetting report", lines=10, interactive=False, elem_id="multi-report",
                                        elem_classes=["mono"])
                mr_heat = gr.Image(label="Forgetting heat-map", type="filepath", interactive=False)

            with gr.Tab("Export", id="export"):
                with gr.Row():
                    ex_run = gr.Dropdown(run_choices(True), label="Completed run", elem_id="export-run")
                    ex_refresh = gr.Button("Refresh", scale=0)
                with gr.Row():
                    ex_format = gr.Radio(["gguf", "gguf-adapter", "merged"], value="gguf", label="Format")
                    ex_quant = gr.Dropdown(list(QUANTIZATIONS), value="q4_k_m", label="Quantization",
                                           elem_id="export-quant")
                with gr.Row():
                    ex_overwrite = gr.Checkbox(False, label="Replace an existing export")
                    ex_ollama = gr.Checkbox(False, label="Register with Ollama")
                    ex_name = gr.Textbox("", label="Ollama model name")
                ex_start = gr.Button("Export", variant="primary", elem_id="export-start")
                ex_status = gr.Markdown(elem_id="export-status")
                ex_parity = gr.Textbox(label="Parity check", lines=9, interactive=False, elem_id="export-parity",
                                        elem_classes=["mono"])
                ex_file = gr.File(label="Download", interactive=False, elem_id="export-file")

            with gr.Tab("Runs", id="runs"):
                rn_refresh = gr.Button("Refresh", elem_id="runs-refresh")
                rn_table = gr.Dataframe(headers=RUN_COLUMNS, value=runs_table(ws.list_runs(), ws.root),
                                        interactive=False, wrap=True, elem_id="runs-table")
                with gr.Row():
                    rn_id = gr.Textbox(label="Run id (or its first characters)", elem_id="runs-id")
                    rn_show = gr.Button("Show", elem_id="runs-show")
                    rn_resume = gr.Button("Resume", elem_id="runs-resume")
                rn_status = gr.Markdown(elem_id="runs-status")
                with gr.Row():
                    rn_details = gr.Textbox(label="Details", lines=14, interactive=False, elem_id="runs-details",
                                        elem_classes=["mono"])
                    rn_plot = gr.Image(label="Loss", type="filepath", interactive=False)
                with gr.Row():
                    rn_a = gr.Textbox(label="Run A", elem_id="runs-diff-a")
                    rn_b = gr.Textbox(label="Run B", elem_id="runs-diff-b")
                    rn_diff_btn = gr.Button("Diff", elem_id="runs-diff")
                rn_diff = gr.Textbox(label="Differences", lines=10, interactive=False, elem_id="runs-diff-text",
                                        elem_classes=["mono"])
                rn_diff_plot = gr.Image(label="Losses", type="filepath", interactive=False)

        seen = gr.State(None)
        timer = gr.Timer(POLL_SECONDS)

        # ---- dataset ---------------------------------------------------------------------------
        def files_markdown() -> str:
            files = ws.list_files()
            return "Files in the sandbox: " + (", ".join(f"`{f}`" for f in files) if files else "none yet")

        def on_upload(file: Any) -> tuple[Any, ...]:
            if not file:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            rel = ws.save_upload(file)
            return rel, f"uploaded to `{rel}`", files_markdown(), rel, rel

        def on_inspect(path: str, model: str) -> tuple[Any, ...]:
            view = ws.inspect_dataset(path, model)
            status = (f"**File:** `{view['path']}` · **Format:** {view['format']} ({view['reason']}) · **Rows:** {view['rows']} · "
                      f"trained tokens in the preview: {view['trained_tokens']}/{view['preview_tokens']}")
            return status, view["preview"], view["report"], view["path"], view["path"]

        upload.upload(_guard(on_upload, 5, 1), [upload], [ds_path, ds_status, ds_files, tr_data, mr_data]).then(
            _guard(on_inspect, 5), [ds_path, ds_model], [ds_status, ds_preview, ds_report, tr_data, mr_data])
        ds_load.click(_guard(on_inspect, 5), [ds_path, ds_model], [ds_status, ds_preview, ds_report, tr_data, mr_data])

        # ---- train -----------------------------------------------------------------------------
        def form(model: str, preset: str, method: str, lr: str, seq: Any) -> dict[str, Any]:
            return {"model": model, "preset": preset, "method": method, "learning_rate": lr, "max_seq_length": seq}

        def on_plan(model: str, preset: str, method: str, lr: str, seq: Any) -> tuple[Any, ...]:
            return "", ws.plan_text(**form(model, preset, method, lr, seq))

        def on_train(model: str, data: str, preset: str, method: str, steps: Any, lr: str, seq: Any) -> tuple[Any, ...]:
            fields = form(model, preset, method, lr, seq)
            plan = ws.plan_text(**fields)
            output = ws.start_training(dataset=data, steps=steps, **fields)
            return f"training started; output `{output}` (progress above)", plan

        tr_inputs = [tr_model, tr_preset, tr_method, tr_lr, tr_seq]
        tr_plan_btn.click(_guard(on_plan, 2), tr_inputs, [tr_status, tr_plan])
        tr_start.click(_guard(on_train, 2), [tr_model, tr_data, tr_preset, tr_method, tr_steps, tr_lr, tr_seq],
                       [tr_status, tr_plan])

        # ---- multi-run -------------------------------------------------------------------------
        def on_multi(data: str, runs_n: Any, samples: Any, steps: Any, model: str, preset: str, seq: Any) -> str:
            output = ws.start_multi_run(datasets=data, num_runs=runs_n, steps_per_run=steps, samples_per_run=samples,
                                        model=model, preset=preset, max_seq_length=seq)
            return f"multi-run started; output `{output}` (progress above)"

        mr_start.click(_guard(on_multi, 1), [mr_data, mr_runs, mr_samples, mr_steps, mr_model, mr_preset, mr_seq],
                       [mr_status])

        # ---- export ----------------------------------------------------------------------------
        def on_export(run_id: str, fmt: str, quant: str, overwrite: bool, ollama: bool, name: str) -> str:
            ws.start_export(run_id or "", format=fmt, quantization=quant, ollama=ollama, ollama_name=name,
                            overwrite=overwrite)
            return "export started (progress above)"

        ex_start.click(_guard(on_export, 1), [ex_run, ex_format, ex_quant, ex_overwrite, ex_ollama, ex_name],
                       [ex_status])
        ex_refresh.click(lambda: gr.update(choices=run_choices(True)), None, [ex_run])

        # ---- runs ------------------------------------------------------------------------------
        def on_show(run_id: str) -> tuple[Any, ...]:
            record = ws.get_run(run_id)
            return "", run_text(record), ws.plot({record.run_id[:8]: record.loss_history}, f"run-{record.run_id[:8]}")

        def on_diff(a: str, b: str) -> tuple[Any, ...]:
            from .views import diff_text

            d = ws.diff_runs(a, b)
            plot = ws.plot({d.a.run_id[:8]: d.a.loss_history, d.b.run_id[:8]: d.b.loss_history},
                           f"diff-{d.a.run_id[:8]}-{d.b.run_id[:8]}")
            return "", diff_text(d), plot

        def on_resume(run_id: str) -> str:
            rid = ws.start_resume(run_id)
            return f"resuming run `{rid[:8]}` (progress above)"

        rn_refresh.click(lambda: runs_table(ws.list_runs(), ws.root), None, [rn_table])
        rn_show.click(_guard(on_show, 3), [rn_id], [rn_status, rn_details, rn_plot])
        rn_diff_btn.click(_guard(on_diff, 3), [rn_a, rn_b], [rn_status, rn_diff, rn_diff_plot])
        rn_resume.click(_guard(on_resume, 1), [rn_id], [rn_status])

        # ---- the live job panel ----------------------------------------------------------------
        def on_stop() -> str:
            return "stopping after the current step…" if ws.runner.stop() else "no job is running"

        stop_btn.click(on_stop, None, [stop_md])

        poll_outputs = [job_md, loss_plot, job_log, ex_parity, ex_file, mr_table, mr_heat, rn_table, ex_run, seen]

        def poll(last: Any) -> tuple[Any, ...]:
            state = ws.runner.snapshot()
            key = (state.started_at, state.status, len(state.metrics), len(state.log))
            if key == last:
                return tuple(gr.skip() for _ in poll_outputs)
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
                choices = run_choices(True)
                newest = result.get("run_id") if state.status == "completed" and state.kind != "export" else None
                export_runs = gr.update(choices=choices, value=newest) if newest else gr.update(choices=choices)
            return (job_markdown(state), plot, "\n".join(state.log), parity, download, table, heat, runs_rows,
                    export_runs, key)

        timer.tick(poll, [seen], poll_outputs)
        demo.load(poll, [seen], poll_outputs).then(files_markdown, None, [ds_files])
    return demo
