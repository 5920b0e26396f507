#!/usr/bin/env python3
"""Build ``sample_data/fashion-mnist.h5``, the small real store nnkcli ships with.

Source: Debian's ``dataset-fashion-mnist`` package (``apt-get install
dataset-fashion-mnist``), the IDX files in ``/usr/share/datasets/fashion-mnist/``.

* ``train``: 1,000 images per class drawn (seeded) from the 60,000 training images;
* ``val``: 200 images per class drawn (seeded) from the 10,000 test images;
* features: pixel values scaled to [0, 1], centred on the train subset's mean and
  projected on its first 64 principal components (PCA fitted with numpy on the
  train subset only, so nothing of ``val`` leaks into the features);
* ids: ``train-images:<index>`` / ``t10k-images:<index>``, the image's position in its
  IDX file.

It is a stand-in for self-supervised features: real, small (10,000 x 64 and
2,000 x 64), and with the class structure a k-NN/NNK evaluation needs.

Usage::

    python sample_data/make_fashion_mnist.py [--source DIR] [--out PATH] [--seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import os
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
# the packaged file (sample_data/fashion-mnist.h5 links to it), so that a wheel carries the store
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "nnkcli" / "data" / "fashion-mnist.h5"
TRAIN_PER_CLASS = 1000
VAL_PER_CLASS = 200
N_COMPONENTS = 64


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array (uint8 images or labels)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def per_class_sample(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``per_class`` random rows of every class."""
    picks = [rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False) for c in range(len(CLASS_NAMES))]
    return np.sort(np.concatenate(picks))


def fit_pca(x: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and components (n_components, d) of ``x`` (n, d), with a fixed sign.

    The components are the top eigenvectors of the (d, d) covariance matrix, which is
    much cheaper than an SVD of the (n, d) data for n >> d. An eigenvector's sign is
    arbitrary (it may differ between LAPACK builds); making the largest-magnitude
    loading positive keeps the output reproducible.
    """
    mean = x.mean(axis=0)
    centred = x - mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / (len(x) - 1))
    components = eigenvectors[:, np.argsort(eigenvalues)[::-1][:n_components]].T
    flip = np.sign(components[np.arange(n_components), np.abs(components).argmax(axis=1)])
    return mean, components * flip[:, None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="store to write (replaced)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from nnkcli.storage.store import FeatureStore, write_split

    files = {
        name: args.source / f"{name}-ubyte.gz"
        for name in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
    }
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install dataset-fashion-mnist)", file=sys.stderr)
        return 1
    train_images = read_idx(files["train-images-idx3"]).reshape(-1, 28 * 28)
    train_labels = read_idx(files["train-labels-idx1"]).astype(np.int64)
    test_images = read_idx(files["t10k-images-idx3"]).reshape(-1, 28 * 28)
    test_labels = read_idx(files["t10k-labels-idx1"]).astype(np.int64)

    rng = np.random.default_rng(args.seed)
    train_idx = per_class_sample(train_labels, TRAIN_PER_CLASS, rng)
    val_idx = per_class_sample(test_labels, VAL_PER_CLASS, rng)
    x_train = train_images[train_idx].astype(np.float64) / 255.0
    x_val = test_images[val_idx].astype(np.float64) / 255.0
    mean, components = fit_pca(x_train, N_COMPONENTS)
    f_train = ((x_train - mean) @ components.T).astype(np.float32)
    f_val = ((x_val - mean) @ components.T).astype(np.float32)

    recipe = (
        f"pixels/255, centred and projected on the first {N_COMPONENTS} principal components "
        f"of the {len(train_idx)} train images (numpy); seed {args.seed}"
    )
    common = {"dataset": "Fashion-MNIST (Debian dataset-fashion-mnist)", "features": recipe, "seed": args.seed}
    splits = {
        "train": (
            f_train,
            train_labels[train_idx],
            [f"train-images:{i}" for i in train_idx],
            f"Fashion-MNIST training set: {TRAIN_PER_CLASS} images per class, PCA-{N_COMPONENTS} pixel features",
            f"{TRAIN_PER_CLASS} per class from the 60,000 training images",
        ),
        "val": (
            f_val,
            test_labels[val_idx],
            [f"t10k-images:{i}" for i in val_idx],
            f"Fashion-MNIST test set: {VAL_PER_CLASS} images per class, PCA-{N_COMPONENTS} pixel features",
            f"{VAL_PER_CLASS} per class from the 10,000 test images",
        ),
    }
    # built in a scratch folder beside the output, then moved over it in one step
    with tempfile.TemporaryDirectory(dir=args.out.parent, prefix=".build-") as scratch:
        tmp = Path(scratch) / args.out.name
        for name, (features, labels, ids, source, subset) in splits.items():
            write_split(
                tmp,
                name,
                features,
                labels,
                class_names=CLASS_NAMES,
                ids=ids,
                source=source,
                attrs={**common, "subset": subset},
            )
        os.replace(tmp, args.out)
    with FeatureStore(args.out) as store:
        for split in store:
            print(f"{split.name}: {split.n} x {split.dim} {split.dtype}  sha256 {split.content_sha256[:16]}")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
