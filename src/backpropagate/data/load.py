"""Read a dataset from wherever the user keeps it into plain python rows.

Users hand us JSONL, JSON, CSV, Parquet, text files, ``save_to_disk`` folders, in-memory
``datasets`` objects or hub names. Everything becomes ``list[dict]`` of plain python values here, so
format detection and templating never have to care where the data came from, and every mistake in
the file is reported with the file name (and line or row) instead of a parser traceback.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import re
import stat
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backpropagate.errors import BackpropagateError

from .validate import MAX_DEPTH, checked_json, tree_problem

__all__ = ["SUPPORTED_SUFFIXES", "RowsRead", "dataset_fingerprint", "load_rows", "read_rows"]

SUPPORTED_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet", ".txt")
# CSV cells in these columns hold JSON (lists of turns, tool schemas) and are decoded on load.
NESTED_CSV_COLUMNS = frozenset({"conversations", "messages", "history", "tools"})
# Keys that mark a top-level JSON object as a single row rather than a wrapper such as {"data": [...]}.
_ROW_KEYS = frozenset({"conversations", "messages", "instruction", "output", "text"})
# owner/name or name, as the hub spells repository ids.
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")
_CHUNK = 1 << 20
_ROW_REF = re.compile(r"row (\d+)\b")


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def load_rows(source: Any, *, split: str = "train") -> list[dict[str, Any]]:
    """Load ``source`` (path, ``save_to_disk`` folder, hub name, ``Dataset``/``DatasetDict`` or a
    list of dicts) as plain python dict rows, raising ``BackpropagateError`` for anything the user
    can fix."""
    return read_rows(source, split=split).rows


@dataclass(frozen=True)
class RowsRead:
    """Rows plus where they came from, so a later complaint about "row N" can name the file and line."""

    rows: list[dict[str, Any]]
    file: Path | None = None
    lines: list[int] | None = None  # the 1-based line each row starts on (JSONL, CSV, TXT)

    def locate(self, err: BackpropagateError) -> BackpropagateError:
        """``err`` with the file (and line) in front when its message starts with "row N"."""
        match = _ROW_REF.match(err.message)
        if self.file is None or match is None:
            return err
        number = int(match.group(1))
        line = f" line {self.lines[number - 1]}" if self.lines and 0 < number <= len(self.lines) else ""
        return BackpropagateError(err.code, f"{self.file}{line}: {err.message}", hint=err.hint,
                                  retryable=err.retryable)

    @contextmanager
    def located(self) -> Iterator[None]:
        """Re-raise the format checks' errors inside the block with the file and line of the row."""
        try:
            yield
        except BackpropagateError as err:
            located = self.locate(err)
            if located is err:
                raise
            raise located from err


def check_source(source: Any) -> None:
    """Fail now on a dataset that cannot be read (a missing file, an unsupported type), before a run starts."""
    _resolve(source)


def read_rows(source: Any, *, split: str = "train") -> RowsRead:
    """:func:`load_rows`, keeping the file and each row's line for later error messages."""
    kind, value = _resolve(source)
    file, lines = None, None
    if kind == "rows":
        where = "the list of rows"
        rows = _plain_rows(value, where)
    elif kind == "dataset":
        where = f"the {type(value).__name__}"
        rows = _rows_from_dataset(_pick_split(value, split, "the DatasetDict"), where)
    elif kind == "dir":
        where = f"the dataset folder {value}"
        rows = _rows_from_dataset(_load_from_disk(value, split), where)
    elif kind == "hub":
        where = f"the hub dataset {value!r} (split {split!r})"
        rows = _rows_from_dataset(_load_hub(value, split), where)
    else:
        rows, lines = _load_file(value)
        where, file = str(value), value
    if not rows:
        raise BackpropagateError("INPUT_DATASET_EMPTY", f"{where} has no rows.")
    return RowsRead(rows, file, lines)


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
            rows = _rows_from_dataset(_pick_split(value, split, "the DatasetDict"), f"the {type(value).__name__}")
        else:
            rows = _plain_rows(value, "the list of rows")
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
    mode = _stat_mode(path)
    if mode is None:
        if isinstance(source, str) and _looks_like_hub_name(text):
            return "hub", text
        raise BackpropagateError("INPUT_FILE_NOT_FOUND", f"dataset file {path} does not exist.")
    if stat.S_ISDIR(mode):
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return "dir", path
        raise _plain_folder(path)
    if not stat.S_ISREG(mode):
        raise BackpropagateError(
            "INPUT_FILE_UNREADABLE", f"dataset {path} is {_file_kind(mode)}, not a regular file; it was not read.",
            hint="Pass a regular file: save the stream to a .jsonl file first.")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise BackpropagateError(
            "INPUT_UNSUPPORTED_FILE_TYPE",
            f"{path} has suffix {suffix or '(none)'!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}.")
    return "file", path


def _stat_mode(path: Path) -> int | None:
    """The file type bits of ``path`` (links followed), None when nothing is there; never opens it.

    ``Path.exists`` says False for a symlink loop and a dangling link, which would then read as
    "does not exist" (or as a hub name): those get their own message here.
    """
    try:
        return os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BackpropagateError(
                "INPUT_FILE_UNREADABLE", f"dataset path {path} is a symbolic link loop (it points back at itself).",
                hint="Point the link at the real file, or pass the file itself.") from exc
        if path.is_symlink():
            raise BackpropagateError(
                "INPUT_FILE_NOT_FOUND", f"dataset path {path} is a symbolic link to {os.readlink(path)}, "
                "which does not exist.") from exc
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
            return None
        raise BackpropagateError("INPUT_FILE_UNREADABLE", f"dataset path {path} cannot be read: "
                                 f"{exc.strerror or exc}.") from exc


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def _plain_folder(path: Path) -> BackpropagateError:
    """A folder is read only when datasets.save_to_disk wrote it; say which of its files could be passed."""
    try:
        files = sorted(p.name for p in path.iterdir() if p.suffix.lower() in SUPPORTED_SUFFIXES and p.is_file())
    except OSError:
        files = []
    found = (f"; data files in it: {', '.join(files[:5])}{', ...' if len(files) > 5 else ''} (pass one of them)"
             if files else "")
    return BackpropagateError(
        "INPUT_UNSUPPORTED_FILE_TYPE",
        f"{path} is a folder but not one written by datasets.save_to_disk "
        f"(no dataset_dict.json or state.json in it){found}.",
        hint="Pass a .jsonl, .json, .csv, .parquet or .txt file, or a folder written by Dataset.save_to_disk.")


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
def _load_file(path: Path) -> tuple[list[dict[str, Any]], list[int] | None]:
    """Dispatch on suffix; rows and their lines. An empty file is reported as empty whatever its type."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BackpropagateError("INPUT_FILE_UNREADABLE", f"dataset file {path} cannot be read: {exc}.") from exc
    if size == 0:
        raise BackpropagateError("INPUT_DATASET_EMPTY", f"{path} is empty (0 bytes).")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _load_parquet(path), None
    text = _read_text(path)
    if suffix in (".jsonl", ".ndjson"):
        return _parse_jsonl(text, path)
    if suffix == ".json":
        return _parse_json(text, path)
    if suffix == ".csv":
        return _parse_csv(text, path)
    numbered = [(number, line) for number, line in enumerate(_lines(text), start=1) if line.strip()]
    return [{"text": line} for _, line in numbered], [number for number, _ in numbered]


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


def _parse_jsonl(text: str, path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """One JSON object per line; blank lines skipped; errors name the 1-based line."""
    rows, numbers = [], []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            value = checked_json(line, path, number)
        except json.JSONDecodeError as exc:
            raise BackpropagateError(
                "INPUT_INVALID_JSON", f"{path} line {number}: invalid JSON ({exc.msg} at column {exc.colno}).",
            ) from exc
        if not isinstance(value, dict):
            raise BackpropagateError(
                "INPUT_INVALID_JSON",
                f"{path} line {number}: expected a JSON object, got {_json_type(value)}.")
        rows.append(value)
        numbers.append(number)
    return rows, numbers


def _parse_json(text: str, path: Path) -> tuple[list[dict[str, Any]], list[int] | None]:
    """A JSON array of objects, an object wrapping one list, a single row object, or JSONL content."""
    try:
        value = checked_json(text, path)
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
    return value, None


def _unwrap(obj: dict[str, Any], path: Path) -> list[Any] | dict[str, Any]:
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


def _parse_csv(text: str, path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Header row + one row per record; JSON in nested columns (``conversations`` ...) is decoded."""
    _raise_csv_field_limit()
    _check_csv_quotes(text, path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows, lines = [], []
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
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise BackpropagateError(
            "INPUT_FILE_CORRUPT", f"{path} line {reader.line_num}: malformed CSV ({exc}).",
            hint="Re-save the file as standard comma-separated CSV with a header row.") from exc
    return rows, lines


# A cell that opens with a quote (at the start of a line or after a comma) up to its closing quote, or to the
# end of the file when it has none; "" inside is an escaped quote. Possessive, as csv reads it: no backtracking.
_CSV_QUOTED_CELL = re.compile(r'(?:^|(?<=[,\r\n]))"(?:[^"]|"")*+("|\Z)')


def _check_csv_quotes(text: str, path: Path) -> None:
    """csv reads an unterminated quote as one cell running to the end of the file; refuse it instead."""
    if '"' not in text:
        return
    cells = deque(_CSV_QUOTED_CELL.finditer(text), maxlen=1)  # only the last cell can run to the end
    last = cells[0] if cells else None
    if last is not None and last.group(1) == "":
        line = text.count("\n", 0, last.start()) + 1
        raise BackpropagateError(
            "INPUT_FILE_CORRUPT", f"{path} line {line}: a quoted cell opens here and is never closed "
            "(unterminated quote), so the rest of the file would be read as one cell.",
            hint='Close the quote, or double a quote inside a quoted cell ("" for ").')


def _decode_cell(cell: str, column: str, row: int, line: int, path: Path) -> Any:
    """Decode a JSON cell; an empty cell is ``None`` and plain strings are left alone."""
    stripped = cell.strip()
    if not stripped:
        return None
    if stripped[0] not in "[{":
        return cell
    try:
        return checked_json(stripped, path, line, column)
    except json.JSONDecodeError as exc:
        raise BackpropagateError(
            "INPUT_INVALID_JSON",
            f"{path} row {row} (line {line}), column {column!r}: invalid JSON ({exc.msg}).") from exc


def _raise_csv_field_limit() -> None:
    """Documents longer than csv's default 128 KiB field limit are normal in pre-training text."""
    limit = 1 << 31
    if csv.field_size_limit() < limit - 1:
        csv.field_size_limit(limit - 1)


def _load_parquet(path: Path) -> list[dict[str, Any]]:
    """Read with pyarrow; ``to_pylist`` already yields plain python values."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError with no common base
        raise BackpropagateError(
            "INPUT_FILE_CORRUPT", f"{path} is not a readable Parquet file: {exc}.",
            hint="Re-export it with pandas.DataFrame.to_parquet or pyarrow.parquet.write_table.") from exc
    return _plain_rows(table.to_pylist(), str(path))


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
        raise BackpropagateError(  # a local folder: damaged, not a dependency that may come back
            "INPUT_FILE_CORRUPT", f"{path} looks like a save_to_disk folder but cannot be loaded: {exc}",
            hint="Re-create it with Dataset.save_to_disk, or pass the original data file.") from exc
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


def _rows_from_dataset(ds: Any, where: str) -> list[dict[str, Any]]:
    """Rows of a Dataset (arrow, ignoring any numpy/torch format) or an IterableDataset."""
    return _plain_rows(ds.to_list() if hasattr(ds, "to_list") else ds, where)


# --------------------------------------------------------------------------------------------
# plain python values and hashing
# --------------------------------------------------------------------------------------------
def _plain_rows(rows: Iterable[Mapping[str, Any]], where: str) -> list[dict[str, Any]]:
    """Plain copies of rows that are bounded in depth and hold real text (``_plain`` recurses)."""
    out = []
    for number, row in enumerate(rows, start=1):
        problem = tree_problem(row)
        if problem == "depth":
            raise BackpropagateError("INPUT_INVALID_JSON", f"{where}: row {number} nests objects and lists "
                                     f"deeper than {MAX_DEPTH} levels.")
        if problem == "surrogate":
            raise BackpropagateError("INPUT_ENCODING_ERROR", f"{where}: row {number} holds a string with a lone "
                                     "UTF-16 surrogate, which is not a character and cannot be encoded as UTF-8.")
        out.append(_plain_row(row))
    return out


def _plain_row(row: Mapping[str, Any]) -> dict[str, Any]:
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
