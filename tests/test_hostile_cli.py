"""A hostile user through the real CLI: generated bad options, system folders as output, credentials in
model ids and paths, and pathological dataset files. Every case must exit non-zero with a ``[CODE]:``
line and a hint, print no traceback, leave no partial output, and show its secret nowhere: not in
stdout or stderr, not in ``runs.db``, not in any file under the output folder or the run index.

The cases are generated from a seed (``BACKPROPAGATE_FUZZ_SEED``, printed in each case's id) so a failure
can be replayed; the disk-full and concurrent-run cases have their own modules (tests/test_disk_full.py,
tests/test_output_rules.py)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import string
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backpropagate.atomic import SYSTEM_DIRS
from process_helpers import BACKPROP

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("BACKPROPAGATE_FUZZ_SEED", "20261205"))
CODE_LINE = re.compile(r"^\[([A-Z][A-Z0-9_]+)\]: .+", re.MULTILINE)


@dataclass
class Case:
    """One hostile command: ``argv`` may use {model}, {data}, {out}, {tmp}; ``make`` builds files in tmp."""

    name: str
    argv: list[str]
    codes: set[str]  # the expected code(s); empty: any INPUT_ code
    make: Callable[[Path], None] = lambda tmp: None
    secrets: list[str] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)  # paths that must not exist afterwards


def _word(rng: random.Random, n: int = 8) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(n))


def _secret(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randint(16, 32)))


TRAIN = ["train", "--model", "{model}", "--data", "{data}", "--output", "{out}", "--steps", "2", "--report-to", "none"]


def option_cases(rng: random.Random) -> list[Case]:
    ints = ["--steps", "--lora-r", "--gradient-accumulation", "--max-seq-length", "--save-steps",
            "--keep-checkpoints", "--seed"]
    floats = ["--learning-rate", "--lora-alpha", "--lora-dropout"]
    cases = []
    for flag in ints:
        value = rng.choice([str(10 ** rng.randint(12, 40) + rng.randint(0, 9)), str(-rng.randint(1, 10 ** 6)),
                            _word(rng, rng.randint(1, 6)), f"{rng.random():.3f}"])
        cases.append(Case(f"{flag}={value}", [*TRAIN, flag, value], {"INPUT_INVALID_VALUE", "INPUT_INVALID_USAGE"}))
    for flag in floats:
        value = rng.choice(["inf", "-inf", "nan", "1e999", "-" + _word(rng, 3), "Infinity"])
        cases.append(Case(f"{flag}={value}", [*TRAIN, flag, value], {"INPUT_INVALID_VALUE", "INPUT_INVALID_USAGE"}))
    unknown = "--" + _word(rng, rng.randint(3, 10))
    cases.append(Case(f"unknown option {unknown}", [*TRAIN, unknown, "1"], {"INPUT_INVALID_USAGE"}))
    cases.append(Case("max_seq_length too short", [*TRAIN, "--max-seq-length", str(rng.randint(1, 8))],
                      {"INPUT_SEQUENCE_TOO_SHORT"}))
    return cases


def system_folder_cases(rng: random.Random) -> list[Case]:
    cases = [Case("train --output /", [*TRAIN[:5], "--output", "/", *TRAIN[7:]], {"INPUT_OUTPUT_PATH_FORBIDDEN"})]
    roots = [d for d in SYSTEM_DIRS if Path(d).is_dir() and d not in ("/proc", "/sys", "/dev")]
    for command in ("train", "multi-run", "export", "data"):
        target = f"{rng.choice(roots)}/backprop-fuzz-{_word(rng)}"
        argv = {"train": [*TRAIN[:5], "--output", target, *TRAIN[7:]],
                "multi-run": ["multi-run", "--model", "{model}", "--data", "{data}", "--data", "{data}",
                              "--output", target, "--steps", "1"],
                "export": ["export", "{model}", "-q", "f16", "--output", target + ".gguf"],
                "data": ["data", "dedup", "{data}", "--out", target + ".jsonl"]}[command]
        cases.append(Case(f"{command} --output {target}", argv, {"INPUT_OUTPUT_PATH_FORBIDDEN"},
                          forbidden=[target, target + ".jsonl", target + ".gguf"]))
    return cases


def secret_cases(rng: random.Random) -> list[Case]:
    cases = []
    for key in rng.sample(["db_password", "access_token", "api_key", "MY_API_KEY", "secret_key", "auth_token",
                           "password", "hf_token"], 4):
        secret = _secret(rng)
        cases.append(Case(f"model id with ?{key}=", [*TRAIN[:2], f"org/model?{key}={secret}", *TRAIN[3:]],
                          {"INPUT_MODEL_ID_HAS_CREDENTIALS"}, secrets=[secret]))
    secret = _secret(rng)
    cases.append(Case("model URL with user:password@", [*TRAIN[:2], f"https://user:{secret}@example.invalid/m",
                                                        *TRAIN[3:]], {"INPUT_MODEL_ID_HAS_CREDENTIALS"},
                      secrets=[secret]))
    token = "hf_" + _secret(rng)

    def make(tmp: Path) -> None:  # a data folder named after a token, holding a file that fails to parse
        folder = tmp / token
        folder.mkdir()
        (folder / "data.jsonl").write_text('{"text": "ok"}\n{"text": \n')

    cases.append(Case("token in the dataset path", [*TRAIN[:4], f"{{tmp}}/{token}/data.jsonl", *TRAIN[5:]],
                      {"INPUT_INVALID_JSON"}, make=make, secrets=[token]))
    return cases


def _write(name: str, body: bytes | str) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        (tmp / name).write_bytes(body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body)
    return make


def data_cases(rng: random.Random) -> list[Case]:
    depth = rng.randint(2_000, 150_000)
    nested = "[" * depth + "]" * depth
    row = {"instruction": _word(rng), "output": _word(rng)}
    lines = [json.dumps(row) for _ in range(rng.randint(3, 9))]
    bad = rng.randrange(len(lines))
    at = rng.randint(1, 5)
    with_surrogate = list(lines)  # valid JSON whose string escapes a lone UTF-16 surrogate
    with_surrogate[bad] = '{"instruction": "' + _word(rng)[:at] + "\\ud800" + _word(rng) + '", "output": "x"}'
    csv_rows = ["instruction,output"] + [f"{_word(rng)},{_word(rng)}" for _ in range(rng.randint(3, 9))]
    broken = rng.randrange(1, len(csv_rows))
    csv_rows[broken] = csv_rows[broken].replace(",", ',"', 1)  # a quote that never closes
    cases = [
        Case(f"JSON nested {depth} deep", [*TRAIN[:4], "{tmp}/deep.jsonl", *TRAIN[5:]], {"INPUT_INVALID_JSON"},
             make=_write("deep.jsonl", f'{{"text": {nested}}}\n')),
        Case(f"lone surrogate on line {bad + 1}", [*TRAIN[:4], "{tmp}/surrogate.jsonl", *TRAIN[5:]],
             {"INPUT_ENCODING_ERROR"}, make=_write("surrogate.jsonl", "\n".join(with_surrogate) + "\n")),
        Case("lone surrogate, data report", ["data", "report", "{tmp}/surrogate.jsonl"], {"INPUT_ENCODING_ERROR"},
             make=_write("surrogate.jsonl", "\n".join(with_surrogate) + "\n")),
        Case(f"CSV quote left open on line {broken + 1}", [*TRAIN[:4], "{tmp}/broken.csv", *TRAIN[5:]],
             {"INPUT_FILE_CORRUPT"}, make=_write("broken.csv", "\n".join(csv_rows) + "\n")),
        Case('{"text": null}', [*TRAIN[:4], "{tmp}/null.jsonl", *TRAIN[5:]], set(),
             make=_write("null.jsonl", '{"text": null}\n' * rng.randint(1, 4))),
        Case("symlink loop", [*TRAIN[:4], "{tmp}/loop.jsonl", *TRAIN[5:]], set(),
             make=lambda tmp: os.symlink(tmp / "loop.jsonl", tmp / "loop.jsonl")),
        Case("a FIFO", [*TRAIN[:4], "{tmp}/fifo.jsonl", *TRAIN[5:]], set(),
             make=lambda tmp: os.mkfifo(tmp / "fifo.jsonl")),
        Case("random bytes", [*TRAIN[:4], "{tmp}/noise.jsonl", *TRAIN[5:]], set(),
             make=_write("noise.jsonl", bytes([0xFF, 0xFE]) + rng.randbytes(rng.randint(10, 400)))),
    ]
    return cases


def _cases() -> list[Case]:
    rng = random.Random(SEED)
    return [*option_cases(rng), *system_folder_cases(rng), *secret_cases(rng), *data_cases(rng)]


CASES = _cases()


def _all_text(root: Path) -> bytes:
    blobs = []
    for path in root.rglob("*") if root.exists() else []:
        if path.is_file() and not path.is_symlink():
            blobs.append(path.read_bytes())
    return b"\n".join(blobs)


@pytest.mark.parametrize("case", CASES, ids=[f"{SEED}-{c.name}" for c in CASES])
def test_hostile_input_is_a_coded_error_with_nothing_left_behind(case: Case, tiny_llama: Path, tmp_path: Path,
                                                                  quickstart_copy: Path) -> None:
    work, out, home = tmp_path / "work", tmp_path / "out", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    case.make(work)
    values = {"model": str(tiny_llama), "data": str(quickstart_copy), "out": str(out), "tmp": str(work)}
    argv = [arg.format(**values) if "{" in arg else arg for arg in case.argv]
    try:
        result = subprocess.run([BACKPROP, *argv], capture_output=True, text=True, timeout=300, cwd=work,
                                env={**os.environ, "HOME": str(home), "OMP_NUM_THREADS": "1"})
    finally:
        leaked = [p for p in case.forbidden if Path(p).exists()]
        for path in leaked:
            shutil.rmtree(path, ignore_errors=True)
    text = result.stdout + result.stderr
    assert not leaked, f"wrote into a system folder: {leaked}"
    assert result.returncode != 0, text[-2000:]
    codes = CODE_LINE.findall(result.stderr)
    assert codes, text[-2000:]
    # a named code, or (where the issue names none) an input error: never a runtime one
    assert codes[-1] in case.codes if case.codes else codes[-1].startswith("INPUT_"), text[-2000:]
    assert "hint: " in result.stderr and "Traceback" not in text and "RUNTIME_UNEXPECTED" not in text
    leftovers = [p for p in [*out.rglob("*"), *work.rglob("*")] if ".partial" in p.name or p.name.endswith(".tmp")]
    assert not leftovers, leftovers
    stored = _all_text(out) + _all_text(home)
    for secret in case.secrets:
        assert secret not in text, f"secret in the output: {text[-2000:]}"
        assert secret.encode() not in stored, "secret stored under the output folder or the run index"


@pytest.fixture
def quickstart_copy(tmp_path: Path) -> Path:
    from backpropagate.demo import quickstart_path

    return Path(shutil.copy(quickstart_path(), tmp_path / "quickstart.jsonl"))
