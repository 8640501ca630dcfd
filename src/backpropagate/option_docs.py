"""One sentence per Trainer/CLI option. Kept free of imports so the CLI can show help instantly;
config.py attaches the same text to its typed fields."""

OPTION_DOCS: dict[str, str] = {
    "model": "Hub id or local folder of the base model.",
    "trust_remote_code": "Run model code shipped in the model repository. Off unless you trust the repo.",
    "lora_r": "LoRA rank (> 0); left unset, the LoRA preset's (quality 256, fast 16).",
    "lora_alpha": "LoRA scaling numerator (> 0); the update is scaled by alpha / r. Left unset, the LoRA "
                  "preset's (quality 512, fast 32).",
    "lora_dropout": "Dropout on the LoRA input, in [0, 1).",
    "target_modules": 'Module names to adapt, or "all-linear" for every linear layer except the output head; '
                      "left unset, the LoRA preset's (quality all-linear, fast q_proj,v_proj).",
    "learning_rate": "Peak learning rate (after warm-up). Left unset: 2e-4 times the LoRA preset's factor "
                     "(quality 10x = 2e-3, fast 1x = 2e-4); mode=full uses 2e-4.",
    "batch_size": 'Packed rows per micro-batch; "auto" picks from VRAM (4 for >= 24 GB, 2 for >= 16 GB, '
                  "1 below, 2 on the CPU).",
    "gradient_accumulation": "Micro-batches per optimizer step. Left unset with batch_size \"auto\" on a GPU, "
                             "raised to keep 16 rows per step (8 at batch 2, 16 at batch 1).",
    "max_seq_length": "Tokens per packed row; longer samples are truncated (and counted).",
    "output_dir": "Where the adapter (<output_dir>/lora) and later checkpoints and history go.",
    "train_on_responses": "Take the loss on assistant tokens only (and the end-of-turn token that closes "
                          "them); False trains on every token.",
    "packing": "Pack several samples into each row without padding; attention never crosses samples. "
               "False puts one sample per row.",
    "chunked_loss": "Compute the loss a chunk of tokens at a time (at most 1024 tokens and 32 M logits), so "
                    "the [tokens, vocabulary] fp32 logits never exist whole (same loss and gradients); None "
                    "(auto) is on. Multi-process "
                    "runs and unknown architectures use the plain loss.",
    "memory_check": 'On a GPU, before any weight loads: "refuse" stops a run whose memory plan does not fit '
                    'the card (RUNTIME_WILL_NOT_FIT, with the plan\'s suggestions), "warn" logs it and trains '
                    'anyway, "off" skips the check.',
    "warmup_ratio": "Share of the steps spent warming the learning rate up, in [0, 1).",
    "lr_scheduler": "Learning-rate schedule after warm-up: cosine, linear or constant.",
    "weight_decay": "AdamW weight decay (>= 0).",
    "max_grad_norm": "Gradient clipping norm (> 0).",
    "seed": "Seed for data order, adapter init and dropout: same seed, same run.",
    "lora_preset": 'LoRA preset: "quality" (rank 256, alpha 512, all linear layers, 10x learning rate) or "fast" '
                   "(rank 16, alpha 32, q_proj+v_proj, base learning rate). Explicit arguments and env vars "
                   "override its values.",
    "use_dora": "Train a DoRA adapter (weight-decomposed LoRA: a learned magnitude per output); needs peft >= 0.10.",
    "init_lora_weights": 'Adapter initialisation: "default" (B = 0), "pissa" (principal singular vectors of '
                         'the base weights; saved as a plain LoRA adapter) or "loftq" (offsets the 4-bit '
                         "quantization error; needs load_in_4bit=True).",
    "mode": '"lora" trains an adapter; "full" trains every weight (models up to 4.5 B parameters) and saves '
            "a full model folder.",
    "load_in_4bit": "QLoRA: load the base weights in 4-bit NF4 with double quantization (bitsandbytes, the "
                    "qlora extra) and train a LoRA adapter on top.",
    "optim": 'Optimizer name as in transformers (e.g. "adamw_torch", "paged_adamw_8bit", "adafactor", "sgd"); '
             "None picks paged_adamw_8bit on GPUs under 24 GB, adamw_torch_fused on larger ones, adamw_torch "
             "on the CPU.",
    "gradient_checkpointing": 'Recompute activations in the backward pass to save memory; "auto" turns it on '
                              "on a GPU and off on the CPU.",
    "use_unsloth": "Load through Unsloth when it is installed and works here (CUDA only).",
    "unsloth_fallback": "If Unsloth cannot load (not installed, no CUDA, a broken build), fall back to "
                        "transformers + peft and say so once at start-up; False makes that a hard error.",
    "save_steps": "Write a resumable checkpoint every this many optimizer steps (and always at the end); "
                  "0 saves only at the end.",
    "keep_checkpoints": "How many of the newest checkpoints of a run to keep (>= 1).",
    "oom_recovery": "On a GPU out-of-memory error, halve the micro-batch, double the accumulation (same rows "
                    "per step) and redo the step; False makes the first OOM a RUNTIME_GPU_OOM failure.",
    "report_to": 'Experiment trackers: "auto" (each of tensorboard, mlflow, wandb that is installed), "none", or '
                 "names (a list, or comma-separated). Files go to the output directory; W&B without "
                 "credentials runs offline.",
    "strategy": 'How the processes of a multi-process run (--nproc, torchrun, srun) share the model: "ddp" '
                "(each holds all of it; the default), \"fsdp\" (PyTorch FSDP: weights, gradients and optimizer "
                "state sharded, one decoder layer gathered at a time) or \"deepspeed\" (DeepSpeed ZeRO, the "
                "deepspeed extra). One process ignores it.",
    "deepspeed_config": "A DeepSpeed JSON config file (implies strategy=\"deepspeed\"); batch sizes and clipping "
                        "come from this run's settings (\"auto\" in the file), and it may not name an optimizer "
                        "or scheduler.",
    "zero_stage": "DeepSpeed ZeRO stage (implies strategy=\"deepspeed\"): 2 partitions optimizer state and "
                  "gradients, 3 the weights too; overrides the file's; default 2.",
    "thermal_pause_celsius": "GPU temperature at which training checkpoints and pauses (NVML; off on the CPU).",
    "thermal_resume_celsius": "A paused run continues once the GPU is below this temperature.",
    "thermal_critical_celsius": "At this GPU temperature training checkpoints and stops "
                                "(RUNTIME_GPU_TEMPERATURE_CRITICAL).",
}
