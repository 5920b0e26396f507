"""Importing tables of embeddings: lightly's ``embeddings.csv`` and parquet files/folders.

Every source here is a row source for :func:`nnkcli.storage.store.write_split`: it has
``shape`` and ``dtype`` and returns ``rows[a:b]`` as a numpy block, read from the file
when asked, so importing holds one block (plus the small ids and labels) in memory:

- ``embeddings.csv`` (lightly: ``filenames,embedding_0,...,embedding_{d-1},labels``): one
  scan checks every line's width and keeps the ids, the labels and the byte offset of
  every ``_CSV_STRIDE``-th line; a block is parsed from the nearest offset on.
- parquet (an embedding column of fixed-size lists or lists of floats, one label column):
  read one row group at a time with pyarrow (this is the only module that imports it).
- the embedding-reader / clip-retrieval layout: a folder of ``.npy`` embedding shards with
  parquet metadata files, matched by the shard number ending their names
  (``img_emb/img_emb_3.npy`` <-> ``metadata/metadata_3.parquet``).
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

import numpy as np

from nnkcli.errors import InputError, MissingDependencyError
from nnkcli.extract.common import ImportedFeatures
from nnkcli.storage.concat_rows import ConcatRows

_CSV_STRIDE = 4096  # lines between remembered byte offsets
#: the longest field of a lightly CSV (the csv module's own default limit): a file name or a number
#: longer than this is a damaged or hostile file, refused by line before it is held in memory
MAX_CSV_FIELD = 2**17
#: the longest header line (its column names)
_MAX_CSV_HEADER = 2**26
_EMBEDDING_COLUMN = re.compile(r"^embedding_(\d+)$")
_SHARD_NUMBER = re.compile(r"(\d+)$")


def _concatenated(parts: list, names: list[str]) -> ConcatRows:
    """The files' row sources as one (``names``: the files, for the error)."""
    dims = {int(p.shape[1]) for p in parts}
    if len(dims) != 1:
        raise InputError(
            f"shards have different dimensions: {sorted(dims)} ({', '.join(names)})",
            hint="every shard must hold embeddings of the same model",
        )
    return ConcatRows(parts)


# --- lightly embeddings.csv ------------------------------------------------------------


class CsvRows:
    """The embedding columns of a lightly ``embeddings.csv``, parsed block by block."""

    def __init__(self, path: Path, n: int, dim: int, offsets: list[int]):
        self.path, self.offsets = path, offsets
        self.shape, self.dtype = (n, dim), np.dtype(np.float64)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("row sources support contiguous row slices only")
        start, stop, _ = index.indices(len(self))
        out = np.empty((max(0, stop - start), self.shape[1]), dtype=np.float64)
        if stop <= start:
            return out
        first = start // _CSV_STRIDE
        with open(self.path, encoding="utf-8", newline="") as fh:
            fh.seek(self.offsets[first])
            reader = csv.reader(fh)
            row = first * _CSV_STRIDE
            try:
                for fields in reader:
                    if row >= stop:
                        break
                    if row >= start:
                        out[row - start] = _csv_floats(fields[1:-1], self.path, row)
                    row += 1
            except csv.Error:  # the scan refused longer fields: the file changed since
                raise _field_too_long(self.path, row + 2) from None
        if row < stop:
            raise InputError(f"{self.path} is shorter than when it was scanned", hint="was it changed meanwhile?")
        return out


def _csv_floats(fields: list[str], path: Path, row: int) -> np.ndarray:
    try:
        return np.array(fields, dtype=np.float64)
    except ValueError:
        bad = next(f for f in fields if not _is_float(f))
        raise InputError(
            f"{path} line {row + 2}: {bad!r} is not a number", hint="embedding columns hold decimal numbers"
        ) from None


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def load_lightly_csv(path: str | os.PathLike, *, labels_given: bool = False) -> ImportedFeatures:
    """A lightly ``embeddings.csv``: ids from ``filenames``, labels from ``labels``."""
    path = Path(path)
    ids: list[str] = []
    labels: list[str] = []
    offsets: list[int] = []
    try:
        with open(path, "rb") as raw:
            header_line = raw.readline(_MAX_CSV_HEADER).decode("utf-8")
            if len(header_line) >= _MAX_CSV_HEADER:
                raise _field_too_long(path, 1)
            header = _csv_split(header_line, path, 1)
            dim = _check_csv_header(header, path)
            width = dim + 2
            # no field longer than MAX_CSV_FIELD: a longer line is refused unread
            max_line = width * (2 * MAX_CSV_FIELD + 3) + 2
            line_no = 1
            while True:
                at = raw.tell()
                line = raw.readline(max_line)
                if not line:
                    break
                line_no += 1
                if len(line) >= max_line:
                    raise _field_too_long(path, line_no)
                if not line.strip():
                    raise InputError(f"{path} line {line_no} is empty", hint="one sample per line")
                if (line_no - 2) % _CSV_STRIDE == 0:
                    offsets.append(at)
                fields = _csv_split(line.decode("utf-8"), path, line_no)
                if len(fields) != width:
                    end = "" if line.endswith(b"\n") else " (the last line has no end: is the file truncated?)"
                    raise InputError(
                        f"{path} line {line_no} has {len(fields)} fields, the header has {width}{end}",
                        hint="every line holds filenames, embedding_0..embedding_{d-1}, labels",
                    )
                ids.append(fields[0])
                labels.append(fields[-1].strip())
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not a utf-8 text file", hint=f"could not decode it: {exc}") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    n = len(ids)
    if n == 0:
        raise InputError(f"{path} has a header but no rows", hint="there is nothing to import")
    label_array = None
    if not labels_given:
        try:
            label_array = np.array([int(v) for v in labels], dtype=np.int64)
        except ValueError:
            label_array = np.array(labels, dtype=str)
    return ImportedFeatures(
        features=CsvRows(path, n, dim, offsets),
        labels=label_array,
        ids=ids,
        source=f"lightly:{path.resolve()}",
        attrs={"source_format": "lightly"},
    )


def _csv_split(text: str, path: Path, line_no: int) -> list[str]:
    """The fields of one line; a field longer than ``MAX_CSV_FIELD`` is refused, naming the line."""
    if text.count('"'):  # a quoted filename: let the csv module split it
        try:
            fields = next(csv.reader(io.StringIO(text)), [])
        except csv.Error:  # its field limit is MAX_CSV_FIELD (its default): the only error of one line
            raise _field_too_long(path, line_no) from None
    else:
        fields = text.rstrip("\r\n").split(",")
    if any(len(f) > MAX_CSV_FIELD for f in fields):
        raise _field_too_long(path, line_no)
    return fields


def _field_too_long(path: Path, line_no: int) -> InputError:
    return InputError(
        f"{path} line {line_no} has a field longer than {MAX_CSV_FIELD} characters",
        hint="a lightly embeddings.csv holds file names, numbers and labels: is this file damaged?",
    )


def _check_csv_header(header: list[str], path: Path) -> int:
    hint = "lightly's embeddings.csv header is filenames,embedding_0,...,embedding_{d-1},labels"
    names = [h.strip() for h in header]
    for required in ("filenames", "labels"):
        if required not in names:
            raise InputError(f"{path} has no '{required}' column (header: {','.join(names)[:120]})", hint=hint)
    middle = names[1:-1]
    numbers = [int(m.group(1)) for c in middle if (m := _EMBEDDING_COLUMN.match(c))]
    if (
        names[0] != "filenames"
        or names[-1] != "labels"
        or not middle
        or len(numbers) != len(middle)
        or numbers != list(range(len(middle)))
    ):
        raise InputError(f"{path} does not have lightly's column layout (header: {','.join(names)[:120]})", hint=hint)
    return len(middle)


# --- parquet ---------------------------------------------------------------------------


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise MissingDependencyError("reading parquet files", "parquet") from None
    return pyarrow


def _open_parquet(path: Path):
    pa = _pyarrow()
    try:
        return pa.parquet.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path} is not a valid parquet file", hint=f"pyarrow could not read it: {exc}") from None


class ParquetRows:
    """An embedding column of one parquet file, read one row group at a time."""

    def __init__(self, path: Path, column: str, pf=None):
        pa = _pyarrow()
        self.path, self.column = path, column
        self._cached: tuple[int, np.ndarray] | None = None
        pf = pf or _open_parquet(path)
        field = pf.schema_arrow.field(column)
        kind = field.type
        if pa.types.is_fixed_size_list(kind):
            dim = int(kind.list_size)
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
            dim = None  # checked per row group
        else:
            raise InputError(
                f"column '{column}' of {path} has type {kind}, not a list of floats",
                hint="store each embedding as a (fixed-size) list of floats",
            )
        value_type = kind.value_type
        if not (pa.types.is_floating(value_type) or pa.types.is_integer(value_type)):
            raise InputError(
                f"column '{column}' of {path} holds {value_type}, not numbers",
                hint="store each embedding as a (fixed-size) list of floats",
            )
        self.group_starts = np.cumsum(
            [0] + [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
        )
        n = int(self.group_starts[-1])
        if dim is None:
            dim = len(self._group(0)[0]) if n else 0
        self.shape = (n, dim)
        self.dtype = np.dtype(value_type.to_pandas_dtype())

    def __len__(self) -> int:
        return self.shape[0]

    def _group(self, g: int) -> np.ndarray:
        if self._cached is not None and self._cached[0] == g:
            return self._cached[1]
        pa = _pyarrow()
        try:
            table = pa.parquet.ParquetFile(self.path).read_row_group(g, columns=[self.column])
        except (pa.ArrowException, OSError) as exc:
            raise InputError(
                f"{self.path} is damaged or truncated (row group {g})", hint=f"pyarrow could not read it: {exc}"
            ) from None
        column = table.column(self.column).combine_chunks()
        if column.null_count:
            row = int(self.group_starts[g]) + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError(
                f"column '{self.column}' of {self.path} has a missing embedding (row {row})",
                hint="drop the rows without an embedding",
            )
        lengths = np.diff(column.offsets.to_numpy()) if hasattr(column, "offsets") else None
        dim = (
            self.shape[1]
            if hasattr(self, "shape")
            else (int(lengths[0]) if lengths is not None and len(lengths) else 0)
        )
        if lengths is not None and (lengths != dim).any():
            row = int(self.group_starts[g]) + int(np.flatnonzero(lengths != dim)[0])
            raise InputError(
                f"column '{self.column}' of {self.path}: row {row} has {int(lengths[lengths != dim][0])} values, "
                f"the first row has {dim}",
                hint="every embedding must have the same length",
            )
        values = column.flatten().to_numpy(zero_copy_only=False)
        block = values.reshape(len(column), dim)
        self._cached = (g, block)
        return block

    def __getitem__(self, index) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("row sources support contiguous row slices only")
        start, stop, _ = index.indices(len(self))
        blocks = []
        g = int(np.searchsorted(self.group_starts, start, side="right")) - 1
        while start < stop and g < len(self.group_starts) - 1:
            lo = int(self.group_starts[g])
            block = self._group(g)
            blocks.append(block[start - lo : min(stop, int(self.group_starts[g + 1])) - lo])
            start = int(self.group_starts[g + 1])
            g += 1
        if not blocks:
            return np.empty((0, self.shape[1]), dtype=self.dtype)
        return np.concatenate(blocks) if len(blocks) > 1 else blocks[0]


def _read_column(pf, path: Path, column: str, what: str) -> np.ndarray:
    pa = _pyarrow()
    try:
        values = pf.read(columns=[column]).column(column)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path} is damaged or truncated", hint=f"pyarrow could not read {what}: {exc}") from None
    if values.null_count:
        raise InputError(
            f"{what} column '{column}' of {path} has {values.null_count} missing values",
            hint="write -1 for an unlabelled row",
        )
    return values.to_numpy(zero_copy_only=False)


def _columns(pf) -> list[str]:
    return list(pf.schema_arrow.names)


def _require_column(pf, path: Path, column: str, option: str) -> None:
    if column not in _columns(pf):
        raise InputError(
            f"{path} has no column '{column}' (it has: {', '.join(_columns(pf))})",
            hint=f"name the column with {option}",
        )


def load_parquet(
    path: str | os.PathLike,
    *,
    features_key: str | None = None,
    labels_key: str | None = None,
    labels_given: bool = False,
) -> ImportedFeatures:
    """A parquet file, or a folder of them (read in name order), with an embedding column."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.suffix == ".parquet") if path.is_dir() else [path]
    features_key = features_key or "embedding"
    labels_key_used = labels_key or "label"
    parts, labels, ids = [], [], []
    for file in files:
        pf = _open_parquet(file)
        _require_column(pf, file, features_key, "--features-key")
        parts.append(ParquetRows(file, features_key, pf))
        if not labels_given:
            if labels_key is not None or labels_key_used in _columns(pf):
                _require_column(pf, file, labels_key_used, "--labels-key")
                labels.append(_read_column(pf, file, labels_key_used, "labels"))
        id_column = _id_column(pf)
        if id_column is not None:
            ids.append(_read_column(pf, file, id_column, "ids").astype(str))
    return _imported(parts, files, labels, ids, labels_given, "parquet", path)


def _id_column(pf) -> str | None:
    return next((c for c in ("id", "image_path", "filename", "filenames", "key") if c in _columns(pf)), None)


def _imported(parts, files, labels, ids, labels_given, fmt, path) -> ImportedFeatures:
    features = parts[0] if len(parts) == 1 else _concatenated(parts, [f.name for f in files])
    if labels and len(labels) != len(files):
        raise InputError("only some parquet files have a labels column", hint="give every file the labels column")
    if not labels and not labels_given:
        import logging

        logging.getLogger("nnkcli").warning("%s has no labels column; the split is stored unlabelled", path.name)
    return ImportedFeatures(
        features=features,
        labels=np.concatenate(labels) if labels else None,
        ids=[str(i) for i in np.concatenate(ids)] if ids and len(ids) == len(files) else None,
        source=f"{fmt}:{Path(path).resolve()}",
        attrs={"source_format": fmt},
    )


# --- embedding-reader layout -----------------------------------------------------------


def is_embedding_reader_folder(path: Path) -> bool:
    """A folder of ``.npy`` shards (itself or a sub-folder) beside parquet metadata files."""
    npy, parquet = _layout_files(path)
    return bool(npy) and bool(parquet)


def _layout_files(path: Path, features_key: str | None = None) -> tuple[list[Path], list[Path]]:
    def shards(folder: Path, suffix: str) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.suffix == suffix and p.is_file()) if folder.is_dir() else []

    emb_dirs = [path / features_key] if features_key else [path, path / "img_emb", path / "embeddings"]
    npy = next((found for d in emb_dirs if (found := shards(d, ".npy"))), [])
    parquet = next((found for d in (path, path / "metadata") if (found := shards(d, ".parquet"))), [])
    return npy, parquet


def _shard_number(file: Path) -> int | None:
    m = _SHARD_NUMBER.search(file.stem)
    return int(m.group(1)) if m else None


def load_embedding_reader(
    path: str | os.PathLike,
    *,
    features_key: str | None = None,
    labels_key: str | None = None,
    labels_given: bool = False,
) -> ImportedFeatures:
    """``.npy`` embedding shards with parquet metadata, matched by shard number."""
    from nnkcli.extract.arrays import open_npy

    path = Path(path)
    npy, parquet = _layout_files(path, features_key)
    if not npy:
        raise InputError(
            f"{path / (features_key or '')} holds no .npy embedding shards",
            hint="--features-key names the embeddings sub-folder (img_emb, text_emb ...)",
        )
    by_number = {}
    for file in parquet:
        number = _shard_number(file)
        if number is None or number in by_number:
            raise InputError(
                f"cannot match metadata file {file.name} to a shard by number",
                hint="metadata files end with their shard number: metadata_0.parquet ...",
            )
        by_number[number] = file
    npy = sorted(npy, key=lambda f: (_shard_number(f) is None, _shard_number(f) or 0))
    parts, labels, ids, metas = [], [], [], []
    labels_key_used = labels_key or "label"
    for shard in npy:
        number = _shard_number(shard)
        meta = by_number.get(number) if number is not None else None
        if meta is None:
            raise InputError(
                f"embedding shard {shard.name} has no metadata file with number {number}",
                hint=f"expected e.g. metadata_{number}.parquet",
            )
        rows = open_npy(shard)
        if len(rows.shape) != 2:
            raise InputError(
                f"embedding shard {shard} has shape {rows.shape}, expected (n, d)",
                hint="each shard is a 2-D array of embeddings",
            )
        pf = _open_parquet(meta)
        if pf.metadata.num_rows != rows.shape[0]:
            raise InputError(
                f"{shard.name} has {rows.shape[0]} rows but {meta.name} has {pf.metadata.num_rows}",
                hint="each metadata file has one row per embedding of its shard",
            )
        parts.append(rows)
        metas.append(meta)
        if not labels_given and (labels_key is not None or labels_key_used in _columns(pf)):
            _require_column(pf, meta, labels_key_used, "--labels-key")
            labels.append(_read_column(pf, meta, labels_key_used, "labels"))
        id_column = _id_column(pf)
        if id_column is not None:
            ids.append(_read_column(pf, meta, id_column, "ids").astype(str))
    return _imported(parts, npy, labels, ids, labels_given, "embedding-reader", path)
