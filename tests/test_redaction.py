"""Secrets never leave the process: redaction of every pair, URL and token shape (with generated secrets and
generated ordinary text), the refused model id, and one real `backprop train` whose model folder and dataset
path hold tokens: none of stdout, stderr, runs.db or any file of the output folder may contain them."""

from __future__ import annotations

import json
import os
import random
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest

from backpropagate import BackpropagateError, Trainer
from backpropagate.demo import quickstart_path
from backpropagate.logs import configure, get_logger
from backpropagate.redaction import check_model_id, is_redacted, redact, redact_tree, sensitive_key
from support.faults import faults

BACKPROP = str(Path(sys.executable).with_name("backprop"))
SMALL = ["--lora-r", "4", "--lora-alpha", "8", "--batch-size", "2", "--max-seq-length", "64"]
SMALL_ARGS = {"lora_r": 4, "lora_alpha": 8, "batch_size": 2, "max_seq_length": 64}
ALNUM = string.ascii_letters + string.digits
# What an unquoted value may hold (it ends at whitespace , ; & and quotes), and a quoted one.
VALUE_CHARS = ALNUM + "!#$%()*+-./:<=>?@[]^_{|}~"
QUOTED_CHARS = VALUE_CHARS + " ,;&'"
USERINFO_CHARS = ALNUM + "!$%()*+-._~=:;,&"


# --- fixed cases ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,kept", [
    ("org/x?db_password=s3cr3tPW&access_token=abcdef123", "org/x?db_password=***&access_token=***"),
    ("HF_TOKEN=plainvalue MY_API_KEY=xyz secret_key=abc", "HF_TOKEN=*** MY_API_KEY=*** secret_key=***"),
    ('{"password": "x y z", "num_tokens": 12}', '{"password": "***", "num_tokens": 12}'),
    ("https://user:pass@host.example/path?x=1", "https://***@host.example/path?x=1"),
    ("/data/hf_AbCdEf123456/model", "/data/hf_***/model"),
    ("/data/run_hf_AbCdEf123456/model", "/data/run_hf_***/model"),
    ("Authorization: Bearer abc.def.ghijklmnop", "Authorization: Bearer ***"),
    ('error: "{\\"password\\": \\"hunter2\\"}"', 'error: "{\\"password\\": \\"***\\"}"'),
    ("accessToken: foo apiKey=bar X-Amz-Signature=abc&X-Amz-Credential=def",
     "accessToken: *** apiKey=*** X-Amz-Signature=***&X-Amz-Credential=***"),
])
def test_fixed_secrets_are_masked(text: str, kept: str) -> None:
    assert redact(text) == kept
    assert redact(kept) == kept


@pytest.mark.parametrize("text", [
    "max_tokens=5", "tokenizer.json", "num_tokens: 12", "token_count=3", "eos_token=</s>", "pad_token: <pad>",
    "author=Jane", "enable_hf_transfer=1", "convert_hf_to_gguf.py", "hf_name", "max_new_tokens: 64",
    "models/Qwen/Qwen2.5-7B-Instruct", "tokens_per_second=12.5", "the secret is in the data", "task-specific-head",
])
def test_ordinary_text_is_untouched(text: str) -> None:
    assert redact(text) == text


def test_key_words() -> None:
    for key in ("password", "db_password", "DB_PASSWORD", "dbPassword", "HF_TOKEN", "access_token", "accessToken",
                "X-Auth-Token", "MY_API_KEY", "apiKey", "APIKey", "aws_secret_access_key", "client_secret",
                "private_key", "credentials", "authorization", "--password", "token", "bot_token"):
        assert sensitive_key(key), key
    for key in ("max_tokens", "num_tokens", "token_count", "eos_token", "pad_token_id", "tokenizer", "author",
                "keyword", "monkey", "sigma", "key", "hf_token_path", "learning_rate"):
        assert not sensitive_key(key), key


def test_redact_tree_masks_values_under_secret_keys() -> None:
    tree = {"model": {"name": "/m/hf_AbCdEf1234567/x"}, "password": "plain", "list": ["sk-ABCDEFGH12345678"],
            "steps": 3, "eos_token": "</s>"}
    assert redact_tree(tree) == {"model": {"name": "/m/hf_***/x"}, "password": "***", "list": ["sk-***"],
                                 "steps": 3, "eos_token": "</s>"}
    assert is_redacted("/m/hf_***/x") and not is_redacted("/m/model") and not is_redacted(None)


# --- generated secrets and generated ordinary text -----------------------------------------------------------
def _word(rng: random.Random, chars: str, low: int, high: int) -> str:
    return "".join(rng.choice(chars) for _ in range(rng.randint(low, high)))


def _token(rng: random.Random) -> str:
    """A secret in one of the shapes providers issue, with random content."""
    kind = rng.randrange(6)
    if kind == 0:
        return "hf_" + _word(rng, ALNUM, 30, 37) + rng.choice("AZ09")
    if kind == 1:
        return "sk-" + rng.choice(["", "proj-"]) + _word(rng, ALNUM + "_-", 20, 50)
    if kind == 2:
        return rng.choice(["AKIA", "ASIA"]) + _word(rng, string.ascii_uppercase + string.digits, 16, 16)
    if kind == 3:
        return rng.choice(["ghp_", "gho_", "ghs_"]) + _word(rng, ALNUM, 36, 36)
    if kind == 4:
        return "github_pat_" + _word(rng, ALNUM + "_", 40, 80)
    return rng.choice(["xoxb-", "xoxp-"]) + _word(rng, string.digits + "-" + ALNUM, 12, 40)


def _secret_key(rng: random.Random) -> str:
    """A credential-named key: a core word, maybe a prefix and suffix, in snake, SCREAMING, kebab or camel case."""
    core = rng.choice([["password"], ["passwd"], ["pwd"], ["secret"], ["api", "key"], ["apikey"], ["access", "key"],
                       ["private", "key"], ["credential"], ["credentials"], ["auth"], ["authorization"], ["token"]])
    words = ([rng.choice(["db", "my", "aws", "app", "hf", "gh", "client", "slack", "session"])]
             if rng.random() < 0.6 else []) + core
    if core != ["token"] and rng.random() < 0.3 and core[-1] not in ("key",):
        words.append(rng.choice(["value", "v2", "raw"]))
    style = rng.randrange(4)
    if style == 0:
        return "_".join(words)
    if style == 1:
        return "_".join(words).upper()
    if style == 2:
        return "-".join(words)
    return words[0] + "".join(w.capitalize() for w in words[1:])


def _in_context(rng: random.Random) -> tuple[str, str]:
    """(text, secret): a generated secret placed the way users paste them."""
    key = _secret_key(rng)
    plain = _word(rng, VALUE_CHARS, 6, 30)
    quoted = _word(rng, QUOTED_CHARS, 6, 30)
    token = _token(rng)
    before = rng.choice(["", "loading ", "error: could not open ", "[x] ", "cmd --flag "])
    cases = [
        (f"{key}={plain}", plain), (f"export {key}=\"{quoted}\"", quoted), (f"{key}: {plain}", plain),
        (json.dumps({key: quoted, "steps": 3}), quoted), (repr({key: quoted}), quoted), (f"--{key}={plain}", plain),
        (f"https://host.example/p?a=1&{key}={plain}&b=2", plain), (f"org/model?{key}={plain}", plain),
        (f"https://user:{_word(rng, USERINFO_CHARS, 6, 30)}@host.example/x", None),
        (f"/data/{token}/model", token), (f"/data/run_{token}-v2/model.safetensors", token),
        (f"Authorization: Bearer {_word(rng, ALNUM + '._-', 12, 40)}", None), (f"token {token} used", token),
    ]
    text, secret = rng.choice(cases)
    if secret is None:  # the userinfo / bearer cases: the secret is what follows the fixed part
        secret = text.split("user:")[1].split("@")[0] if "user:" in text else text.split("Bearer ")[1]
    return before + text + rng.choice(["", " and more", "\n"]), secret


@pytest.mark.parametrize("seed", range(40))
def test_generated_secrets_never_survive(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(50):
        text, secret = _in_context(rng)
        masked = redact(text)
        assert secret not in masked, (text, masked)
        assert redact(masked) == masked, (text, masked)


def _benign(rng: random.Random) -> str:
    """Ordinary text of this project's logs and configs: ML vocabulary, numbers, paths, prose."""
    key = rng.choice(["max_tokens", "num_tokens", "token_count", "eos_token", "bos_token", "pad_token",
                      "pad_token_id", "max_new_tokens", "tokens_trained", "tokens_per_second", "learning_rate",
                      "lora_r", "author", "seed", "batch_size", "keyword", "sigma", "model.name", "output_dir",
                      "tokenizer", "special_tokens", "num_workers"])
    value = rng.choice([str(rng.randint(0, 10**6)), f"{rng.random():.4f}", "</s>", "<|im_end|>", "[PAD]",
                        _word(rng, string.ascii_lowercase, 3, 12), "true", "null"])
    path = "/".join(rng.choice(["data", "models", "Qwen2.5-7B", "tokenizer.json", "config.json", "runs",
                                "hf_transfer", "task-sketch", "convert_hf_to_gguf.py", "checkpoints",
                                "step-000004"]) for _ in range(rng.randint(1, 5)))
    prose = " ".join(rng.choice(["the", "secret", "token", "tokens", "password", "is", "loss", "of", "auth",
                                 "author", "key", "value", "bearer", "trained"]) for _ in range(rng.randint(2, 9)))
    return rng.choice([f"{key}={value}", f"{key}: {value}", json.dumps({key: value}), f"/{path}", prose,
                       f"{key}={value} {prose} /{path}"])


@pytest.mark.parametrize("seed", range(20))
def test_generated_ordinary_text_is_untouched(seed: int) -> None:
    rng = random.Random(1000 + seed)
    for _ in range(100):
        text = _benign(rng)
        assert redact(text) == text, text


def test_log_lines_redact_nested_values(capsys: pytest.CaptureFixture[str]) -> None:
    configure(level="INFO", json=True)
    try:
        get_logger().info("run_started", model="org/x?db_password=hunter2pw", extra={"token": "zz-top-9"},
                          items=["/d/hf_AbCdEf1234567/m"])
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert "hunter2pw" not in line and "zz-top-9" not in line and "AbCdEf1234567" not in line
    finally:
        configure(json=False)


# --- model ids -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["org/x?db_password=abc&access_token=def", "https://u:p4ss@huggingface.co/org/x",
                                  "org/x?token=hf_AbCdEf1234567890", "HF_TOKEN=abc"])
def test_model_id_with_credentials_is_refused(name: str) -> None:
    with pytest.raises(BackpropagateError) as info:
        check_model_id(name)
    assert info.value.code == "INPUT_MODEL_ID_HAS_CREDENTIALS" and "HF_TOKEN" in info.value.hint
    assert not any(secret in info.value.message for secret in ("abc", "def", "p4ss", "AbCdEf1234567890"))
    with pytest.raises(BackpropagateError):
        Trainer(name)


def test_plain_ids_and_local_folders_pass(tmp_path: Path) -> None:
    folder = tmp_path / "m?token=abcdef"
    folder.mkdir()
    for name in ("Qwen/Qwen2.5-7B-Instruct", str(tmp_path), str(folder), "org/x?revision=main"):
        check_model_id(name)


# --- a real run ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def secret_paths(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A model folder and a dataset path that each hold a generated token."""
    rng = random.Random(17)
    model_token = "hf_" + _word(rng, ALNUM, 30, 30) + "Z9"
    data_token = "ghp_" + _word(rng, ALNUM, 36, 36)
    root = tmp_path_factory.mktemp("secrets")
    model = root / model_token / "model"
    shutil.copytree(tiny_llama, model)
    data = root / f"data-{data_token}" / "train.jsonl"
    data.parent.mkdir()
    shutil.copy(quickstart_path(), data)
    return {"model": str(model), "data": str(data), "model_token": model_token, "data_token": data_token}


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([BACKPROP, *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def _leaks(secrets: list[str], texts: list[str], folders: list[Path]) -> list[str]:
    found = [f"output {i}" for i, text in enumerate(texts) for s in secrets if s in text]
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and any(s.encode() in path.read_bytes() for s in secrets):
                found.append(str(path))
    return found


def test_train_and_history_never_show_the_tokens(secret_paths: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    secrets = [secret_paths["model_token"], secret_paths["data_token"], "s3cretPW", "tok3nValue9"]
    refused = _cli("train", "--data", secret_paths["data"], "--model",
                   "org/x?db_password=s3cretPW&access_token=tok3nValue9", "--steps", "1", "--output", str(out))
    assert refused.returncode != 0 and "[INPUT_MODEL_ID_HAS_CREDENTIALS]" in refused.stderr
    assert "Traceback" not in refused.stderr and not (out / "runs.db").exists()
    trained = _cli("train", "--data", secret_paths["data"], "--model", secret_paths["model"], "--steps", "2",
                   "--save-steps", "1", "--output", str(out), *SMALL)
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_id = next(line.split()[1] for line in trained.stdout.splitlines() if line.startswith("run_id:"))
    shown = [_cli(*args, "--output", str(out)) for args in
             (["list-runs"], ["list-runs", "--json"], ["show-run", run_id[:8]], ["export-runs"],
              ["export-runs", "--format", "csv"])]
    assert all(r.returncode == 0 for r in shown), [r.stderr[-500:] for r in shown]
    assert "hf_***" in shown[2].stdout and "ghp_***" in shown[2].stdout
    texts = [refused.stdout, refused.stderr, trained.stdout, trained.stderr] + [r.stdout + r.stderr for r in shown]
    assert _leaks(secrets, texts, [out, Path(os.environ["BACKPROPAGATE_HOME"])]) == []
    config = json.loads((out / "lora" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == secret_paths["model"].replace(secret_paths["model_token"], "hf_***")


def _failed_run(secret_paths: dict[str, str], out: Path) -> str:
    def fail_at_step_2(where: str, step: int, detail: object) -> None:
        if where == "micro_batch" and step == 2:
            raise RuntimeError("injected failure")

    trainer = Trainer(secret_paths["model"], output_dir=out, save_steps=1, **SMALL_ARGS)
    with faults(fail_at_step_2), pytest.raises(BackpropagateError):
        trainer.train(secret_paths["data"], steps=3)
    from backpropagate import runs

    return runs.list(out)[0].run_id


def test_resume_asks_for_a_redacted_dataset_and_model(secret_paths: dict[str, str], tmp_path: Path) -> None:
    run_id = _failed_run(secret_paths, tmp_path)
    with pytest.raises(BackpropagateError) as info:
        Trainer.from_run(run_id, tmp_path)
    assert info.value.code == "INPUT_RECORDED_PATH_REDACTED" and "model" in info.value.hint.lower()
    trainer = Trainer.from_run(run_id, tmp_path, model=secret_paths["model"])
    with pytest.raises(BackpropagateError) as info:
        trainer.train(resume=run_id)
    assert info.value.code == "INPUT_RECORDED_PATH_REDACTED" and "--data" in info.value.hint
    refused = _cli("resume", run_id[:8], "--output", str(tmp_path), "--model", secret_paths["model"])
    assert "[INPUT_RECORDED_PATH_REDACTED]" in refused.stderr and "Traceback" not in refused.stderr
    done = _cli("resume", run_id[:8], "--output", str(tmp_path), "--model", secret_paths["model"],
                "--data", secret_paths["data"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "steps: 3" in done.stdout
    assert _leaks([secret_paths["model_token"], secret_paths["data_token"]],
                  [refused.stderr, done.stdout, done.stderr], [tmp_path]) == []
