"""The error catalog: every failure a user can cause has a stable code, a hint and a retry flag.

Codes are grouped by prefix: ``INPUT_`` (bad arguments or data), ``DEP_`` (a dependency or model
that cannot be loaded), ``RUNTIME_`` (something went wrong while running), ``STATE_`` (files on
disk that are missing, corrupt or in the way), and feature prefixes such as ``SLAO_`` (multi-run merging)
and ``HUB_`` (pushing to the Hub). Codes never change once released; the CLI prints
``[CODE]: message`` and the hint, and ``backprop info --error-codes`` lists this catalog.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorSpec:
    """What the catalog knows about one code."""

    code: str
    summary: str
    hint: str
    retryable: bool = False


_SPECS = [
    # --- input: arguments and data -------------------------------------------------------------
    ErrorSpec("INPUT_INVALID_VALUE", "An argument has a value outside its allowed range.",
              "Check the value against the parameter table in the README."),
    ErrorSpec("INPUT_FILE_NOT_FOUND", "The dataset path does not exist.",
              "Check the path; relative paths are resolved from the current directory."),
    ErrorSpec("INPUT_DATASET_EMPTY", "The dataset has no rows.",
              "Add at least one example; blank lines are ignored."),
    ErrorSpec("INPUT_FILE_UNREADABLE", "The dataset file exists but cannot be read.",
              "Check the file's permissions."),
    ErrorSpec("INPUT_FILE_CORRUPT", "The dataset file is malformed (broken CSV or Parquet).",
              "Re-export the file; the message names the line or the reader's complaint."),
    ErrorSpec("INPUT_ENCODING_ERROR", "The dataset file is not valid UTF-8 text.",
              "Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in > out`)."),
    ErrorSpec("INPUT_INVALID_JSON", "A line or file that should be JSON does not parse.",
              "Fix the line named in the message; JSONL needs one JSON object per line."),
    ErrorSpec("INPUT_UNSUPPORTED_FILE_TYPE", "The dataset file type is not supported.",
              "Use .jsonl, .json, .csv, .parquet, .txt, a `save_to_disk` folder or a hub dataset name."),
    ErrorSpec("INPUT_UNKNOWN_FORMAT", "No known dataset format matches the rows.",
              "Use ShareGPT (`conversations`), Alpaca (`instruction`/`output`), OpenAI "
              "(`messages`), ChatML text or raw `text`."),
    ErrorSpec("INPUT_MIXED_FORMATS", "Rows of the dataset are in different formats.",
              "Split the file by format, or convert all rows to one format."),
    ErrorSpec("INPUT_NO_ASSISTANT_TURN", "A conversation has no assistant reply to train on.",
              "Add an assistant turn, drop the row, or pass train_on_responses=False."),
    ErrorSpec("INPUT_COLUMN_NOT_FOUND", "A column named in the arguments is not in the dataset.",
              "Use one of the columns listed in the message."),
    ErrorSpec("INPUT_INVALID_CONVERSATION", "A conversation is malformed (unknown role or empty turn).",
              "Roles must be system, user, assistant or tool; every turn needs text."),
    ErrorSpec("INPUT_OUTPUT_DIR_INVALID", "The output directory is a file or cannot be written.",
              "Pass --output with a directory you can write to."),
    ErrorSpec("INPUT_TEMPLATE_MISSING", "The tokenizer has no chat template to render conversations.",
              "Use an instruct/chat model, or set tokenizer.chat_template before training."),
    ErrorSpec("INPUT_TEMPLATE_MISMATCH", "The chat template rewrites assistant text, so its tokens cannot be found.",
              "Pass train_on_responses=False, or use a model whose template keeps assistant text verbatim."),
    ErrorSpec("INPUT_CONFIG_INVALID", "A configuration value (argument or BACKPROPAGATE_ env var) is invalid.",
              "Fix the value named in the message; see the Configuration section of the README."),
    # --- dependencies ----------------------------------------------------------------------------
    ErrorSpec("DEP_MODEL_LOAD_FAILED", "The model could not be loaded.",
              "Check the id for typos; for gated models run `hf auth login`; offline, pass a local "
              "folder that holds config.json and the weights.", retryable=True),
    ErrorSpec("DEP_DATASET_LOAD_FAILED", "A hub dataset could not be loaded.",
              "Check the dataset name and your connection, or pass a local file.", retryable=True),
    ErrorSpec("DEP_GPU_NOT_AVAILABLE", "A GPU is required for this operation but none was found.",
              "Run on a machine with a CUDA GPU, or choose a CPU-capable option."),
    ErrorSpec("DEP_EXTRA_MISSING", "An optional dependency is not installed.",
              "Install the extra named in the message, e.g. `pip install backpropagate[export]`."),
    # --- runtime ---------------------------------------------------------------------------------
    ErrorSpec("RUNTIME_TRAINING_FAILED", "Training stopped with an unexpected error.",
              "Re-run with --verbose for the traceback and include the run_id in a bug report."),
    ErrorSpec("RUNTIME_LOSS_NOT_FINITE", "The loss became NaN or infinite.",
              "Lower the learning rate, or check the data for empty or extreme samples."),
    ErrorSpec("RUNTIME_UNEXPECTED", "An internal error that is not in this catalog.",
              "Re-run with --verbose (or BACKPROPAGATE_DEBUG=1) and report the traceback with the run_id."),
    ErrorSpec("RUNTIME_GPU_OOM", "The GPU ran out of memory.",
              "Keep oom_recovery=True (the default), or lower --batch-size / --max-seq-length."),
    ErrorSpec("SLAO_INCOMPATIBLE_RUNS", "Runs of a multi-run campaign have different adapter shapes.",
              "Keep rank, alpha, rsLoRA and target modules the same across runs of one campaign."),
    ErrorSpec("SLAO_MERGE_DIVERGED", "Merging a run produced NaN or Inf; the previous merged adapter is kept.",
              "Lower the learning rate or the steps per run, then resume the campaign."),
    # --- state on disk ---------------------------------------------------------------------------
    ErrorSpec("STATE_OUTPUT_EXISTS", "The output path exists and would be overwritten.",
              "Choose another path or remove the existing one."),
    ErrorSpec("STATE_WRITE_FAILED", "Writing output files failed (disk full or permission denied).",
              "Free disk space or choose another output directory; nothing was half-written.",
              retryable=True),
    ErrorSpec("STATE_NOT_TRAINED", "The trainer has no trained model yet.",
              "Call trainer.train(...) before save()/export()."),
]

CATALOG: dict[str, ErrorSpec] = {spec.code: spec for spec in _SPECS}


class BackpropagateError(Exception):
    """A failure the user can act on: a stable ``code``, a ``message``, a ``hint`` and ``retryable``."""

    def __init__(self, code: str, message: str, *, hint: str | None = None,
                 retryable: bool | None = None) -> None:
        if code not in CATALOG:
            raise KeyError(f"unknown error code {code!r}; add it to backpropagate.errors.CATALOG")
        spec = CATALOG[code]
        self.code = code
        self.message = message
        self.hint = hint if hint is not None else spec.hint
        self.retryable = spec.retryable if retryable is None else retryable
        super().__init__(f"[{code}]: {message}")

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "hint": self.hint,
                "retryable": self.retryable}


def invalid_value(name: str, value: object, expected: str) -> BackpropagateError:
    """Shorthand for the most common input error: ``name`` must satisfy ``expected``."""
    return BackpropagateError("INPUT_INVALID_VALUE", f"{name}={value!r} is invalid: expected {expected}.")
