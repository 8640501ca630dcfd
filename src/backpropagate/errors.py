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
    ErrorSpec("INPUT_UNKNOWN_OPTION", "A Trainer argument is not one of its options.",
              "Check the spelling against the parameter table in the README (the message names the near one)."),
    ErrorSpec("INPUT_INVALID_USAGE", "The command line does not parse: an unknown option or command, a missing "
              "or mistyped value.", "See the command's --help for its options."),
    ErrorSpec("INPUT_SEQUENCE_TOO_SHORT", "max_seq_length cuts every sample before its first trained token.",
              "Raise max_seq_length (the message says to what), or shorten the prompts."),
    ErrorSpec("INPUT_EVAL_CONFLICT", "Evaluation arguments that cannot go together (eval_data with eval_fraction, "
              "eval_fraction with curriculum).", "Pass either a held-out file (eval_data) or a share to hold out."),
    ErrorSpec("INPUT_EVAL_EMPTY", "The held-out rows leave nothing to train on, have nothing to score, or cannot be "
              "drawn without duplicates.", "Hold out a smaller share, rows with assistant replies, or dedup first."),
    ErrorSpec("INPUT_EVAL_MISSING", "Early stopping was asked for without any evaluation.",
              "Pass eval_data (--eval-data) or eval_fraction (--eval-fraction)."),
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
    ErrorSpec("INPUT_INVALID_TOOL_CALL", "An assistant tool call has no function name, or arguments that are not a "
              "JSON object.", "Give each call a name and arguments as an object or as JSON text of one, "
              "e.g. {\"city\": \"Paris\"}; the message names the row and turn."),
    ErrorSpec("INPUT_TOOL_RESULT_WITHOUT_CALL", "A tool result comes before any assistant tool call it could answer.",
              "Put the assistant turn with `tool_calls` (or a function_call turn) before the tool/observation turn."),
    ErrorSpec("INPUT_INVALID_TOOLS", "An entry of the `tools` column is not a tool schema with a name.",
              "Each tool is {\"type\": \"function\", \"function\": {\"name\": ..., \"parameters\": {...}}} "
              "or {\"name\": ..., \"parameters\": {...}}."),
    ErrorSpec("INPUT_OUTPUT_DIR_INVALID", "The output directory is a file or cannot be written.",
              "Pass --output with a directory you can write to."),
    ErrorSpec("INPUT_TEMPLATE_MISSING", "The tokenizer has no chat template to render conversations.",
              "Use an instruct/chat model, or set tokenizer.chat_template before training."),
    ErrorSpec("INPUT_TEMPLATE_END_OF_TURN", "The chat template's end-of-turn marker is not a token of the tokenizer.",
              "Use the chat template that belongs to the model, or add the marker as a special token and "
              "resize the embeddings; a half-labelled marker would teach the model never to stop."),
    ErrorSpec("INPUT_TEMPLATE_MISMATCH", "The chat template rewrites assistant text, so its tokens cannot be found.",
              "Pass train_on_responses=False, or use a model whose template keeps assistant text verbatim."),
    ErrorSpec("INPUT_OUTPUT_IS_INPUT", "The output path of a data tool is its input dataset.",
              "Write to a new file: the data tools never overwrite their source."),
    ErrorSpec("INPUT_UNKNOWN_FILTER", "A quality filter name is not known.",
              "Use the names listed in the message (see `backprop data filter --help`)."),
    ErrorSpec("INPUT_AUTH_REQUIRED", "The UI would be reachable from other machines without a login.",
              "Set BACKPROPAGATE_UI__AUTH=user:password, pass --auth-file or --auth, or use SSH port "
              "forwarding to a UI on 127.0.0.1."),
    ErrorSpec("INPUT_AUTH_FILE_UNREADABLE", "The UI credentials file is missing, unreadable or not one "
              "user:password line.", "Check the path given by --auth-file or BACKPROPAGATE_UI__AUTH_FILE, its "
              "permissions (chmod 600) and that it holds one line user:password."),
    ErrorSpec("INPUT_SANDBOX_FORBIDDEN", "The UI sandbox is a system or credential location.",
              "Set BACKPROPAGATE_UI__OUTPUT_DIR to a folder of your own."),
    ErrorSpec("INPUT_PATH_OUTSIDE_SANDBOX", "A path given to the UI lies outside its sandbox.",
              "Use a path inside the UI sandbox (BACKPROPAGATE_UI__OUTPUT_DIR)."),
    ErrorSpec("INPUT_UPLOAD_TOO_LARGE", "An uploaded file is larger than the UI accepts.",
              "Put large datasets in the sandbox folder directly and pick them by path."),
    ErrorSpec("INPUT_CONFIG_INVALID", "A configuration value (argument or BACKPROPAGATE_ env var) is invalid.",
              "Fix the value named in the message; see the Configuration section of the README."),
    ErrorSpec("INPUT_STRATEGY_UNSUPPORTED", "The multi-process strategy (FSDP, DeepSpeed) cannot train this setup.",
              "Use DDP (the default strategy), or change the setting the message names."),
    ErrorSpec("INPUT_RESUME_MISMATCH", "The dataset or settings differ from those of the run being resumed.",
              "Resume with the run's own data and settings, or pass --force (force=True) to continue anyway."),
    ErrorSpec("INPUT_RUN_ID_AMBIGUOUS", "A partial run id matches more than one run.",
              "Type more characters of the run id; the message lists the matching runs."),
    ErrorSpec("INPUT_NOT_A_MODEL_DIR", "The export source is neither a model folder nor a PEFT adapter folder.",
              "Pass a folder with config.json + *.safetensors, or one with adapter_config.json "
              "(what trainer.save writes)."),
    ErrorSpec("INPUT_UNKNOWN_QUANTIZATION", "The quantization name is not one the export supports.",
              "Use one of the names listed in the message, e.g. q4_k_m, q8_0 or f16."),
    ErrorSpec("INPUT_UNSUPPORTED_ARCHITECTURE", "The model architecture cannot be exported to GGUF.",
              "Supported: llama, mistral, qwen2, qwen3, phi3 (Phi-4-mini too), smollm3, qwen3.5, gemma2, gemma3; "
              "export --format merged works for any model."),
    ErrorSpec("INPUT_UNSUPPORTED_TOKENIZER", "The tokenizer is not one llama.cpp reproduces exactly.",
              "Export --format merged and convert that folder with llama.cpp's convert_hf_to_gguf.py."),
    ErrorSpec("INPUT_UNSUPPORTED_ADAPTER", "The adapter type cannot be exported this way.",
              "Export --format merged (DoRA and unconverted PiSSA adapters only merge)."),
    ErrorSpec("INPUT_BASE_QUANTIZED", "The base model is stored quantized; merging needs full-precision weights.",
              "Pass --base with the full-precision model the quantized one was made from."),
    ErrorSpec("INPUT_OUTPUT_PATH_FORBIDDEN", "The output path lies inside a protected system directory.",
              "Write to a folder of your own, e.g. ./output."),
    ErrorSpec("INPUT_TEMPLATE_UNTRANSLATABLE", "The chat template has no verified Ollama TEMPLATE translation.",
              "Register without --ollama and write the Modelfile TEMPLATE by hand; the GGUF itself is fine."),
    ErrorSpec("INPUT_MODEL_ID_HAS_CREDENTIALS", "The model id carries a credential (URL query, user:password@ or "
              "key=value); nothing was loaded.",
              "Use the HF_TOKEN environment variable (or `huggingface-cli login`), never a token in the model id."),
    ErrorSpec("INPUT_RECORDED_PATH_REDACTED", "The run's dataset path or model held a credential, so its history "
              "keeps only the redacted form, which cannot be opened.",
              "Pass the dataset (--data) or the model (--model) again, e.g. `backprop resume <run-id> --data "
              "<file>`; its content must be the run's own."),
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
    ErrorSpec("DEP_VERSION_TOO_OLD", "An installed library is older than the requested feature needs.",
              "Upgrade the library named in the message, e.g. `pip install -U 'peft>=0.10'`."),
    ErrorSpec("DEP_UNSLOTH_UNAVAILABLE", "Unsloth was required (unsloth_fallback=False) but could not load.",
              "Install `backpropagate[unsloth]` on a CUDA machine, or pass unsloth_fallback=True "
              "(or use_unsloth=False) to train with transformers + peft."),
    ErrorSpec("DEP_BASE_MODEL_NOT_FOUND", "The adapter's base model cannot be found.",
              "Pass --base with a local copy of the base model, or make its hub id loadable (online or cached)."),
    ErrorSpec("DEP_OLLAMA_REGISTRATION_FAILED", "The model could not be registered with the Ollama server.",
              "Start Ollama (`ollama serve`, URL from OLLAMA_HOST) and re-run, or run the printed "
              "`ollama create` command; the GGUF and Modelfile were kept.", retryable=True),
    # --- runtime ---------------------------------------------------------------------------------
    ErrorSpec("RUNTIME_TRAINING_FAILED", "Training stopped with an unexpected error.",
              "Re-run with --verbose for the traceback and include the run_id in a bug report."),
    ErrorSpec("RUNTIME_LOSS_NOT_FINITE", "The loss became NaN or infinite.",
              "Lower the learning rate, or check the data for empty or extreme samples."),
    ErrorSpec("RUNTIME_UNEXPECTED", "An internal error that is not in this catalog.",
              "Re-run with --verbose (or BACKPROPAGATE_DEBUG=1) and report the traceback with the run_id."),
    ErrorSpec("RUNTIME_GPU_OOM", "The GPU ran out of memory.",
              "Keep oom_recovery=True (the default), or lower --batch-size / --max-seq-length."),
    ErrorSpec("RUNTIME_FULL_FT_MODEL_TOO_LARGE", "mode='full' was asked for a model above the 4 B class.",
              "Use mode='lora' (or load_in_4bit=True for QLoRA), or a sub-4 B preset: phi-4-mini-3.8b, "
              "smollm3-3b, qwen2.5-3b, llama-3.2-3b, llama-3.2-1b."),
    ErrorSpec("RUNTIME_WILL_NOT_FIT", "The memory plan of the run's settings does not fit the GPU; nothing was loaded.",
              "Apply one of the plan's suggestions in the message (load_in_4bit=True, a smaller batch_size or "
              "lora_r, lora_preset='fast', a shorter max_seq_length), or leave those settings unset so the "
              "smart defaults fit the card; memory_check='warn' (--memory-check warn) trains anyway."),
    ErrorSpec("RUNTIME_OOM_RECOVERY_EXHAUSTED", "Out of memory even at one row per micro-batch, after 3 retries.",
              "Lower --max-seq-length or the LoRA rank, or use a larger GPU; then `backprop resume <run-id>`.",
              retryable=True),
    ErrorSpec("RUNTIME_GPU_TEMPERATURE_CRITICAL", "The GPU passed the emergency temperature; training stopped.",
              "A checkpoint was saved: improve the cooling, then `backprop resume <run-id>`.", retryable=True),
    ErrorSpec("SLAO_INCOMPATIBLE_RUNS", "Runs of a multi-run campaign have different adapter shapes.",
              "Keep rank, alpha, rsLoRA and target modules the same across runs of one campaign."),
    ErrorSpec("SLAO_UNSUPPORTED_METHOD", "This adapter type is not covered by SLAO's continual merge.",
              "Use a plain LoRA/QLoRA adapter, or pass experimental=True (--experimental) to merge it anyway; "
              "the report then flags it."),
    ErrorSpec("SLAO_HOLDOUT_OVERLAP", "Every row of a run also occurs elsewhere in the campaign's data: none can be "
              "held out unseen.",
              "Remove duplicate rows first (backprop data dedup), so forgetting is measured on unseen rows."),
    ErrorSpec("INPUT_NOT_ENOUGH_DATA", "The dataset has fewer rows than the runs ask for.",
              "Lower --samples / --runs, or add data; the message says how many rows there are."),
    ErrorSpec("SLAO_MERGE_DIVERGED", "Merging a run produced NaN or Inf; the previous merged adapter is kept.",
              "Lower the learning rate or the steps per run, then resume the campaign."),
    ErrorSpec("RUNTIME_QUANTIZE_FAILED", "llama.cpp's quantizer failed; the full-precision GGUF is kept.",
              "Re-run with --verbose for llama.cpp's log, or export f16 / q8_0, which need no quantizer."),
    ErrorSpec("RUNTIME_PARITY_FAILED", "The exported model does not behave like the trained model.",
              "See export_report.json beside the file (kept, marked .parity-failed); please report it "
              "with the report attached."),
    ErrorSpec("HUB_PUSH_AUTH_REQUIRED", "Pushing to the Hub needs a token with write access.",
              "Run `hf auth login`, or set HF_TOKEN to a token with write access."),
    ErrorSpec("HUB_PUSH_FAILED", "The upload to the Hub failed.",
              "Check the repo id and your connection, then re-run; nothing on the Hub was half-written.",
              retryable=True),
    # --- state on disk ---------------------------------------------------------------------------
    ErrorSpec("STATE_OUTPUT_EXISTS", "The output path exists and would be overwritten.",
              "Choose another path or remove the existing one."),
    ErrorSpec("STATE_WRITE_FAILED", "Writing output files failed (disk full or permission denied).",
              "Free disk space or choose another output directory; nothing was half-written.",
              retryable=True),
    ErrorSpec("STATE_NOT_TRAINED", "The trainer has no trained model yet.",
              "Call trainer.train(...) before save()/export()."),
    ErrorSpec("STATE_NO_ADAPTER", "Full fine-tuning has no adapter to switch off for a base-model answer.",
              "Chat with a second, untrained Trainer(model), or compare with sample_prompts (before/after)."),
    ErrorSpec("STATE_ADAPTER_LOADED", "This Trainer holds a saved adapter to chat with or export, not a run to train.",
              "Train a new run on the base (Trainer(base).train(...)), or finish the run that saved it (backprop resume)."),
    ErrorSpec("STATE_MODEL_SHARDED", "After an FSDP or DeepSpeed run each process holds only a share of the model in memory.",
              "Export or chat from the folder the run saved, in one process."),
    ErrorSpec("STATE_CHECKPOINT_INVALID", "A checkpoint is missing files or fails its checksums.",
              "Nothing valid is left to resume from: start the run again (a new run id)."),
    ErrorSpec("STATE_DATASET_CHANGED", "The dataset file changed since the run was trained on it.",
              "Restore the original file, or pass --force (force=True) to replay on the new content."),
    ErrorSpec("STATE_RUN_NOT_FOUND", "No run with this id is in the output directory's history (runs.db).",
              "Check the id and pass the run's output directory (--output)."),
    ErrorSpec("STATE_HISTORY_CORRUPT", "The run history file (runs.db) is not a readable SQLite database.",
              "Move the file aside (a new history is started) or restore it from a backup."),
    ErrorSpec("STATE_RUN_IN_PROGRESS", "The run is still being trained by a live process.",
              "Wait for it to finish, or stop that process before resuming."),
    ErrorSpec("STATE_RUN_COMPLETED", "The run already finished; there is nothing to resume.",
              "Its adapter is in <output>/lora; start a new run to train further."),
    ErrorSpec("STATE_VOCAB_MISMATCH", "The tokenizer and the model's embedding disagree on the vocabulary size.",
              "Resize the embedding (model.resize_token_embeddings) and save the model again before exporting."),
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


COUNT_MAX = 2**31 - 1  # counts and sizes: far beyond any real run, and within every integer they are stored as


def check_count(name: str, value: object, low: int = 1) -> None:
    """Refuse anything but an integer in ``low .. COUNT_MAX`` (steps, runs: stored in SQLite and tensors)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= COUNT_MAX):
        raise invalid_value(name, value, f"an integer from {low} to {COUNT_MAX}")
