"""Read a dataset from wherever the user keeps it into plain python rows.

Users hand us JSONL, JSON, CSV, Parquet, text files, ``save_to_disk`` folders, in-memory
``datasets`` objects or hub names. Everything becomes ``list[dict]`` of plain python values here, so
format detection and templating never have to care where the data came from, and every mistake in
the file is reported with the file name (and line or row) instead of a parser traceback.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from backpropagate.errors import BackpropagateError

__all__ = ["SUPPORTED_SUFFIXES", "dataset_fingerprint", "load_rows"]

SUPPORTED_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet", ".txt")
# CSV cells in these columns hold JSON (lists of turns, tool schemas) and are decoded on load.
NESTED_CSV_COLUMNS = frozenset({"conversations", "messages", "history", "tools"})
# Keys that mark a top-level JSON object as a single row rather than a wrapper such as {"data": [...]}.
_ROW_KEYS = frozenset({"conversations", "messages", "instruction", "output", "text"})
# owner/name or name, as the hub spells repository ids.
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")
_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def load_rows(source: Any, *, split: str = "train") -> list[dict]:
    """Load ``source`` (path, ``save_to_disk`` folder, hub name, ``Dataset``/``DatasetDict`` or a
    list of dicts) as plain python dict rows, raising ``BackpropagateError`` for anything the user
    can fix."""
    kind, value = _resolve(source)
    if kind == "rows":
        rows = [_plain_row(row) for row in value]
        where = "the list of rows"
    elif kind == "dataset":
        rows = _rows_from_dataset(_pick_split(value, split, "the DatasetDict"))
        where = f"the {type(value).__name__}"
    elif kind == "dir":
        rows = _rows_from_dataset(_load_from_disk(value, split))
        where = f"the dataset folder {value}"
    elif kind == "hub":
        rows = _rows_from_dataset(_load_hub(value, split))
        where = f"the hub dataset {value!r} (split {split!r})"
    else:
        rows = _load_file(value)
        where = str(value)
    if not rows:
        raise BackpropagateError("INPUT_DATASET_EMPTY", f"{where} has no rows.")
    return rows


def dataset_fingerprint(source: Any, *, split: str = "train") -> str:
    """Return a sha256 hex digest of the dataset content, so a resumed run can tell its data changed.

    Files hash their bytes; ``save_to_disk`` folders hash their files in sorted order (ignoring the
    ``cache-*`` files that ``Dataset.map`` drops there); objects and hub datasets hash a canonical
    JSON of their rows.
    """
    kind, value = _resolve(source)
    digest = hashlib.sha256()
    if kind == "file":
        _hash_file(digest, value)
    elif kind == "dir":
        for path in sorted(p for p in value.rglob("*") if p.is_file() and not p.name.startswith("cache-")):
            rel = path.relative_to(value).as_posix()
            digest.update(f"{rel}\0".encode())
            _hash_file(digest, path)
    else:
        if kind == "hub":
            rows: Iterable[Any] = load_rows(value, split=split)
        elif kind == "dataset":
            rows = _rows_from_dataset(_pick_split(value, split, "the DatasetDict"))
        else:
            rows = (_plain_row(row) for row in value)
        for row in rows:
            digest.update(_canonical_json(row).encode("utf-8"))
            digest.update(b"\n")
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# resolving what the source is
# --------------------------------------------------------------------------------------------
def _resolve(source: Any) -> tuple[str, Any]:
    """Classify ``source`` as file, dir, hub, dataset or rows, raising for missing paths."""
    if _is_datasets_object(source):
        return "dataset", source
    if isinstance(source, list | tuple) and all(isinstance(row, Mapping) for row in source):
        return "rows", source
    if not isinstance(source, str | Path):
        raise BackpropagateError(
            "INPUT_INVALID_VALUE",
            f"dataset={type(source).__name__} is not supported: pass a file path, a save_to_disk folder, "
            "a hub dataset name, a datasets.Dataset/DatasetDict or a list of dict rows.")
    text = str(source)
    if not text.strip():
        raise BackpropagateError("INPUT_INVALID_VALUE", "dataset='' is invalid: expected a path or a hub name.")
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return "dir", path
        raise BackpropagateError(
            "INPUT_UNSUPPORTED_FILE_TYPE",
            f"{path} is a folder but not one written by datasets.save_to_disk "
            "(no dataset_dict.json or state.json in it).")
    if path.exists():
        suffix = path.suffix.lower()
        if suffix not in SUPPORTED_SUFFIXES:
            raise BackpropagateError(
                "INPUT_UNSUPPORTED_FILE_TYPE",
                f"{path} has suffix {suffix or '(none)'!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}.")
        return "file", path
    if isinstance(source, str) and _looks_like_hub_name(text):
        return "hub", text
    raise BackpropagateError("INPUT_FILE_NOT_FOUND", f"dataset file {path} does not exist.")


def _looks_like_hub_name(text: str) -> bool:
    """``owner/name`` or ``name`` without a file-like suffix (``teknium/OpenHermes-2.5`` is a name)."""
    if not _HUB_NAME.match(text):
        return False
    suffix = Path(text).suffix.lower()
    return not (suffix in SUPPORTED_SUFFIXES or suffix[1:].isalpha())


def _is_datasets_object(source: Any) -> bool:
    """True for datasets.Dataset / DatasetDict / IterableDataset without importing ``datasets``."""
    module = type(source).__module__ or ""
    return module.split(".")[0] == "datasets" and hasattr(source, "__iter__")


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def _load_file(path: Path) -> list[dict]:
    """Dispatch on suffix; an empty file is reported as empty whatever its type."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BackpropagateError("INPUT_FILE_UNREADABLE", f"dataset file {path} cannot be read: {exc}.") from exc
    if size == 0:
        raise BackpropagateError("INPUT_DATASET_EMPTY", f"{path} is empty (0 bytes).")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _load_parquet(path)
    text = _read_text(path)
    if suffix in (".jsonl", ".ndjson"):
        return _parse_jsonl(text, path)
    if suffix == ".json":
        return _parse_json(text, path)
    if suffix == ".csv":
        return _parse_csv(text, path)
    return [{"text": line} for line in _lines(text) if line.strip()]


def _read_text(path: Path) -> str:
    """Decode strictly as UTF-8 (a BOM is dropped); report where the first bad byte is."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BackpropagateError("INPUT_FILE_UNREADABLE", f"dataset file {path} cannot be read: {exc}.") from exc
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise BackpropagateError("INPUT_ENCODING_ERROR", f"{path} is UTF-16 text; it must be UTF-8.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BackpropagateError(
            "INPUT_ENCODING_ERROR",
            f"{path} is not valid UTF-8: byte 0x{data[exc.start]:02x} at line {line} "
            f"(offset {exc.start}).") from exc


def _lines(text: str) -> list[str]:
    """Split on newlines only: ``str.splitlines`` would also split on U+2028 etc. inside documents."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def _parse_jsonl(text: str, path: Path) -> list[dict]:
    """One JSON object per line; blank lines skipped; errors name the 1-based line."""
    rows = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BackpropagateError(
                "INPUT_INVALID_JSON", f"{path} line {number}: invalid JSON ({exc.msg} at column {exc.colno}).",
            ) from exc
        if not isinstance(value, dict):
            raise BackpropagateError(
                "INPUT_INVALID_JSON",
                f"{path} line {number}: expected a JSON object, got {_json_type(value)}.")
        rows.append(value)
    return rows


def _parse_json(text: str, path: Path) -> list[dict]:
    """A JSON array of objects, an object wrapping one list, a single row object, or JSONL content."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):  # JSONL saved as .json
            return _parse_jsonl(text, path)
        raise BackpropagateError(
            "INPUT_INVALID_JSON", f"{path} line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}).",
        ) from exc
    if isinstance(value, dict):
        value = _unwrap(value, path)
    if not isinstance(value, list):
        raise BackpropagateError(
            "INPUT_INVALID_JSON", f"{path}: expected a JSON array of objects, got {_json_type(value)}.")
    for index, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise BackpropagateError(
                "INPUT_INVALID_JSON",
                f"{path}: item {index} of the array is {_json_type(item)}, expected a JSON object.")
    return value


def _unwrap(obj: dict, path: Path) -> list | dict:
    """``{"data": [...]}`` -> the list; a lone row such as ``{"conversations": [...]}`` -> ``[obj]``."""
    if _ROW_KEYS & obj.keys():
        return [obj]
    lists = {key: val for key, val in obj.items() if isinstance(val, list)}
    if len(lists) == 1:
        return next(iter(lists.values()))
    if len(lists) > 1:
        raise BackpropagateError(
            "INPUT_INVALID_JSON",
            f"{path}: the top-level object holds several lists ({', '.join(map(repr, lists))}); "
            "expected a JSON array of rows or an object holding exactly one list.")
    return [obj]


def _parse_csv(text: str, path: Path) -> list[dict]:
    """Header row + one row per record; JSON in nested columns (``conversations`` ...) is decoded."""
    _raise_csv_field_limit()
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        for number, record in enumerate(reader, start=1):
            if None in record:
                raise BackpropagateError(
                    "INPUT_FILE_CORRUPT",
                    f"{path} row {number} (line {reader.line_num}) has more cells than the header has columns.",
                    hint="Quote cells that contain commas or newlines, e.g. save the CSV with pandas.")
            row: dict[str, Any] = {}
            for key, cell in record.items():
                if key in NESTED_CSV_COLUMNS and isinstance(cell, str):
                    row[key] = _decode_cell(cell, key, number, reader.line_num, path)
                else:
                    row[key] = cell
            rows.append(row)
    except csv.Error as exc:
        raise BackpropagateError(
            "INPUT_FILE_CORRUPT", f"{path} line {reader.line_num}: malformed CSV ({exc}).",
            hint="Re-save the file as standard comma-separated CSV with a header row.") from exc
    return rows


def _decode_cell(cell: str, column: str, row: int, line: int, path: Path) -> Any:
    """Decode a JSON cell; an empty cell is ``None`` and plain strings are left alone."""
    stripped = cell.strip()
    if not stripped:
        return None
    if stripped[0] not in "[{":
        return cell
    try:
        return json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise BackpropagateError(
            "INPUT_INVALID_JSON",
            f"{path} row {row} (line {line}), column {column!r}: invalid JSON ({exc.msg}).") from exc


def _raise_csv_field_limit() -> None:
    """Documents longer than csv's default 128 KiB field limit are normal in pre-training text."""
    limit = 1 << 31
    if csv.field_size_limit() < limit - 1:
        csv.field_size_limit(limit - 1)


def _load_parquet(path: Path) -> list[dict]:
    """Read with pyarrow; ``to_pylist`` already yields plain python values."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError with no common base
        raise BackpropagateError(
            "INPUT_FILE_CORRUPT", f"{path} is not a readable Parquet file: {exc}.",
            hint="Re-export it with pandas.DataFrame.to_parquet or pyarrow.parquet.write_table.") from exc
    return [_plain_row(row) for row in table.to_pylist()]


# --------------------------------------------------------------------------------------------
# datasets objects, folders and the hub
# --------------------------------------------------------------------------------------------
def _pick_split(obj: Any, split: str, where: str) -> Any:
    """Return ``obj[split]`` for a DatasetDict (listing the splits it has), else ``obj`` itself."""
    if not isinstance(obj, Mapping):
        return obj
    if split not in obj:
        raise BackpropagateError(
            "INPUT_INVALID_VALUE",
            f"split={split!r} is invalid: {where} has splits {', '.join(map(repr, obj)) or '(none)'}.")
    return obj[split]


def _load_from_disk(path: Path, split: str) -> Any:
    """``datasets.load_from_disk`` with failures reported against the folder."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise BackpropagateError(
            "DEP_DATASET_LOAD_FAILED", f"could not load the save_to_disk folder {path}: {exc}",
            hint="Re-create it with Dataset.save_to_disk, or pass the original data file.",
            retryable=False) from exc
    return _pick_split(loaded, split, f"the dataset folder {path}")


def _load_hub(name: str, split: str) -> Any:
    """``datasets.load_dataset(name, split=split)``; any failure names the dataset and split."""
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except Exception as exc:
        raise BackpropagateError(
            "DEP_DATASET_LOAD_FAILED",
            f"{name!r} is not a local path and the hub dataset {name!r} (split {split!r}) could not be "
            f"loaded: {type(exc).__name__}: {exc}") from exc


def _rows_from_dataset(ds: Any) -> list[dict]:
    """Rows of a Dataset (arrow, ignoring any numpy/torch format) or an IterableDataset."""
    if hasattr(ds, "to_list"):
        return [_plain_row(row) for row in ds.to_list()]
    return [_plain_row(row) for row in ds]


# --------------------------------------------------------------------------------------------
# plain python values and hashing
# --------------------------------------------------------------------------------------------
def _plain_row(row: Mapping) -> dict:
    """Copy a row with numpy/arrow values turned into python lists, str, int and float."""
    return {str(key): _plain(value) for key, value in row.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Mapping):
        return _plain_row(value)
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if hasattr(value, "as_py"):  # pyarrow scalar
        return _plain(value.as_py())
    if hasattr(value, "tolist"):  # numpy array or scalar (np.str_ is already a str)
        return _plain(value.tolist())
    return value


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    return str(value)


def _hash_file(digest: Any, path: Path) -> None:
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise BackpropagateError("INPUT_FILE_UNREADABLE", f"dataset file {path} cannot be read: {exc}.") from exc


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
