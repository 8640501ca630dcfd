"""One sentence per Trainer/CLI option. Kept free of imports so the CLI can show help instantly;
config.py attaches the same text to its typed fields."""

OPTION_DOCS: dict[str, str] = {
    "model": "Hub id or local folder of the base model.",
    "trust_remote_code": "Run model code shipped in the model repository. Off unless you trust the repo.",
    "lora_r": "LoRA rank (> 0).",
    "lora_alpha": "LoRA scaling numerator (> 0); the update is scaled by alpha / r.",
    "lora_dropout": "Dropout on the LoRA input, in [0, 1).",
    "target_modules": 'Module names to adapt, or "all-linear" for every linear layer except the output head.',
    "learning_rate": "Peak learning rate (after warm-up).",
    "batch_size": 'Packed rows per micro-batch; "auto" picks from VRAM (4 for >= 24 GB, 2 for >= 16 GB, '
                  "1 below, 2 on the CPU).",
    "gradient_accumulation": "Micro-batches per optimizer step.",
    "max_seq_length": "Tokens per packed row; longer samples are truncated (and counted).",
    "output_dir": "Where the adapter (<output_dir>/lora) and later checkpoints and history go.",
    "train_on_responses": "Take the loss on assistant tokens only (and the end-of-turn token that closes "
                          "them); False trains on every token.",
    "packing": "Pack several samples into each row without padding; attention never crosses samples. "
               "False puts one sample per row.",
    "warmup_ratio": "Share of the steps spent warming the learning rate up, in [0, 1).",
    "lr_scheduler": "Learning-rate schedule after warm-up: cosine, linear or constant.",
    "weight_decay": "AdamW weight decay (>= 0).",
    "max_grad_norm": "Gradient clipping norm (> 0).",
    "seed": "Seed for data order, adapter init and dropout: same seed, same run.",
}
