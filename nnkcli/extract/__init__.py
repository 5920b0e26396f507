"""Getting features into a store: importers for arrays, DINO dumps, VISSL folders, lightly's
``embeddings.csv``, safetensors, parquet and the embedding-reader layout.

``load_features(path, split=...)`` recognises the input and returns an
:class:`ImportedFeatures` whose ``features`` reads rows lazily (by block, from the file,
wherever the format allows), ready for :func:`nnkcli.storage.store.write_split`. What the
importers share is in ``common.py``. The optional model extractor (torch) is
``torch_extract.py`` (with ``images.py``, ``models.py`` and its zoos ``timm_models.py`` and
``hf_models.py``, ``features.py``, ``presets.py``, ``torch_checkpoints.py`` with
``checkpoint_keys.py``, and ``distributed.py``) and is imported only when used; nothing here
imports torch at module level.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nnkcli.errors import InputError, MissingDependencyError
from nnkcli.extract.common import _VISSL_FILE, ImportedFeatures, as_numpy, check_input_path  # shared API

FORMATS = ("npy", "npz", "dino", "vissl", "lightly", "safetensors", "parquet", "embedding-reader")
# formats whose features/labels are named by --features-key/--labels-key
_KEYED_FORMATS = ("npz", "safetensors", "parquet", "embedding-reader")
#: keyword arguments of ``images.EvalTransform`` (the rest of the model options go to the extractor)
TRANSFORM_KEYS = ("resize", "crop", "interpolation", "mean", "std")


def require_torch(what: str) -> None:
    """Raise ``MissingDependencyError`` naming ``what`` unless torch and pillow can be imported."""
    try:
        import PIL.Image  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        raise MissingDependencyError(what, "torch") from None


def detect_format(path: str | os.PathLike) -> str:
    """Which importer reads ``path``: ``npy``, ``npz``, ``dino`` or ``vissl``."""
    path = check_input_path(path)
    if path.is_dir():
        from nnkcli.extract.tabular import is_embedding_reader_folder

        names = os.listdir(path)
        if is_embedding_reader_folder(path):
            return "embedding-reader"
        if any(name.endswith(".parquet") for name in names):
            return "parquet"
        if any(_VISSL_FILE.match(name) for name in names):
            return "vissl"
        if any(name.endswith("feat.pth") for name in names):
            return "dino"
        raise InputError(
            f"{path} is a folder but holds neither a DINO dump (trainfeat.pth) "
            "nor VISSL features (rank*_chunk*_*_features.npy) nor parquet files",
            hint="give a .npy/.npz/.csv/.safetensors/.parquet file, a DINO --dump_features folder, "
            "a VISSL extraction folder or a folder of parquet (or .npy + parquet metadata) shards",
        )
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return "vissl" if _VISSL_FILE.match(path.name) else "npy"
    if suffix == ".npz":
        return "npz"
    if suffix in (".pth", ".pt"):
        return "dino"
    if suffix == ".csv":
        return "lightly"
    if suffix == ".safetensors":
        return "safetensors"
    if suffix == ".parquet":
        return "parquet"
    raise InputError(
        f"unsupported input {path}: expected .npy, .npz, .csv (lightly), .safetensors, .parquet, "
        "a DINO .pth dump or a VISSL folder",
        hint="convert the features to a .npy array of shape (n, d)",
    )


def load_features(
    path: str | os.PathLike,
    *,
    split: str,
    labels_path: str | os.PathLike | None = None,
    features_key: str | None = None,
    labels_key: str | None = None,
    layer: str | None = None,
    class_names_path: str | os.PathLike | None = None,
    allow_gaps: bool = False,
) -> ImportedFeatures:
    """Open a features source for import into ``split``.

    Parameters
    ----------
    path : path-like
        ``.npy``; ``.npz``; a DINO ``--dump_features`` file (``trainfeat.pth``) or its
        folder; a VISSL extraction folder (or one of its ``*_features.npy`` files).
    split : str
        The store split being written; picks the DINO/VISSL split in a folder holding
        several (``train`` -> train, ``val``/``test`` -> test).
    labels_path : path-like, optional
        Labels file (``.npy``, ``.npz``, ``.txt``/``.csv`` one per line, ``.pth``);
        overrides labels found beside the features.
    features_key, labels_key : str, optional
        Array names inside a ``.npz`` or ``.safetensors`` (default ``features``/``labels``),
        column names of a parquet file (default ``embedding``/``label``), the embeddings
        sub-folder / metadata label column of an embedding-reader folder; ``labels_key``
        also applies to a ``--labels`` ``.npz``.
    layer : str, optional
        VISSL layer (needed when the folder holds several).
    class_names_path : path-like, optional
        A text file with one class name per line (``labels.txt``): integer label ``i``
        gets the name on line ``i + 1``.
    allow_gaps : bool, default=False
        VISSL: import a folder whose dataset indices have gaps (a rank's shards
        missing) instead of refusing it.

    Raises
    ------
    InputError
        Missing/unreadable files, unknown formats, missing keys/layers, options that do
        not apply to the format.
    MissingDependencyError
        A ``.pth`` dump without torch installed.
    """
    fmt = detect_format(path)
    if layer is not None and fmt != "vissl":
        raise InputError("--layer applies to VISSL folders only", hint=f"{path} was read as {fmt}")
    if allow_gaps and fmt != "vissl":
        raise InputError("--allow-gaps applies to VISSL folders only", hint=f"{path} was read as {fmt}")
    keyed = "npz, safetensors, parquet and embedding-reader inputs"
    if features_key is not None and fmt not in _KEYED_FORMATS:
        raise InputError(f"--features-key applies to {keyed} only", hint=f"{path} was read as {fmt}")
    if labels_key is not None and fmt not in _KEYED_FORMATS and not str(labels_path or "").lower().endswith(".npz"):
        raise InputError(
            f"--labels-key applies to {keyed} only",
            hint="give --labels FILE.npz or --from FILE.npz/.safetensors/.parquet",
        )

    if fmt in ("npy", "npz"):
        from nnkcli.extract.arrays import load_arrays

        imported = load_arrays(
            path, features_key=features_key, labels_key=labels_key, labels_given=labels_path is not None
        )
    elif fmt == "lightly":
        from nnkcli.extract.tabular import load_lightly_csv

        imported = load_lightly_csv(path, labels_given=labels_path is not None)
    elif fmt == "safetensors":
        from nnkcli.extract.safetensors_io import load_safetensors

        imported = load_safetensors(
            path, features_key=features_key, labels_key=labels_key, labels_given=labels_path is not None
        )
    elif fmt in ("parquet", "embedding-reader"):
        from nnkcli.extract import tabular

        load = tabular.load_parquet if fmt == "parquet" else tabular.load_embedding_reader
        imported = load(path, features_key=features_key, labels_key=labels_key, labels_given=labels_path is not None)
    elif fmt == "dino":
        from nnkcli.extract.dino import load_dino

        imported = load_dino(path, split=split, labels_given=labels_path is not None)
    else:
        from nnkcli.extract.vissl import load_vissl

        imported = load_vissl(path, split=split, layer=layer, allow_gaps=allow_gaps)

    if labels_path is not None:
        imported.labels = read_labels(labels_path, key=labels_key)
        imported.attrs["labels_source"] = str(Path(labels_path).resolve())
    if class_names_path is not None:
        imported.class_names = read_class_names(class_names_path)
    return imported


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from a text file, one per line (line i + 1 names class id i)."""
    path = check_input_path(path, "class-names file", "--class-names")
    names = _text_lines(path, "class names", "a class-names file is utf-8 text, one name per line")
    if not names:
        raise InputError(f"{path} holds no class names", hint="one name per line, line 1 = class 0")
    if "" in names:
        raise InputError(
            f"{path} has an empty line (line {names.index('') + 1})", hint="one name per line, line 1 = class 0"
        )
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise InputError(
                f"{path} names class {name!r} twice (lines {seen[name] + 1} and {i + 1})",
                hint="class names must be unique",
            )
        seen[name] = i
    return names


def read_labels(path: str | os.PathLike, *, key: str | None = None) -> np.ndarray:
    """Labels from ``.npy``, ``.npz`` (``key``, default ``labels``), ``.pth`` or a text file.

    Text files hold one label per line (integers or names; blank lines are refused,
    so line numbers stay row numbers). Returns a 1-D array of integers or strings.
    """
    from nnkcli.extract.arrays import load_npy, open_npz_member

    path = check_input_path(path, "labels file", "--labels")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a labels file", hint="give a .npy, .npz, .txt or .pth labels file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return load_npy(path, what="labels")
    if suffix == ".npz":
        return np.asarray(open_npz_member(path, key or "labels", "labels", "--labels-key"))
    if suffix in (".pth", ".pt"):
        from nnkcli.extract.dino import load_tensor

        return as_numpy(load_tensor(path, "labels"))
    if suffix in (".txt", ".csv", ".tsv", ".labels", ""):
        return _read_text_labels(path)
    raise InputError(f"unsupported labels file {path}", hint="give labels as .npy, .npz, .txt (one per line) or .pth")


def _text_lines(path: Path, what: str, hint: str) -> list[str]:
    """The stripped lines of a utf-8 text file, trailing blank lines dropped."""
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what} from {path}: {exc}", hint=hint) from None
    values = [line.strip() for line in lines]
    while values and values[-1] == "":
        values.pop()
    return values


def _read_text_labels(path: Path) -> np.ndarray:
    values = _text_lines(path, "labels", "a text labels file is utf-8, one label per line")
    if "" in values:
        raise InputError(
            f"{path} has an empty line (line {values.index('') + 1})",
            hint="one label per line; write -1 for an unlabelled row",
        )
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except ValueError:
        pass
    try:
        # every line a number but not all integers ("1.5", "2.0"): numbers, checked as a .npy of
        # floats would be (integer values accepted, 1.5 refused), never silently class names
        return np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        return np.array(values, dtype=str)
