#!/usr/bin/env python3
"""Make the tiny importer fixtures in ``tests/data`` (deterministic; needs torch for the DINO dump).

    python tests/data/make_fixtures.py [OUT_DIR]

* ``tiny_features.npy`` (12, 6) float32 and ``tiny_labels.npy`` (12,) int64 with gaps
  ({0, 2, 5}) and one -1;
* ``tiny.npz``: ``features`` (6, 6) float64 and string ``labels``, plus the same data
  under the keys ``emb``/``y``;
* ``dino_dump/``: what DINO's ``--dump_features`` writes (``trainfeat.pth``,
  ``trainlabels.pth``, ``testfeat.pth``, ``testlabels.pth``);
* ``vissl/``: a two-GPU VISSL extraction: split ``train`` (10 samples, layers ``heads``
  (m, 6) and ``res5`` (m, 2, 1, 3)), rank 1 padded with a repeat of sample 0, and split
  ``test`` (4 samples, layer ``heads``).

``truth()`` gives the arrays the importers must reproduce; the tests use it as the
oracle and check that the committed files are what this script makes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def truth() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    return {
        "npy_features": rng.normal(size=(12, 6)).astype(np.float32),
        "npy_labels": np.array([0, 2, 5, 5, 2, 0, -1, 0, 2, 5, 5, 0], dtype=np.int64),
        "npz_features": rng.normal(size=(6, 6)),
        "npz_labels": np.array(["cat", "dog", "cat", "bird", "dog", "cat"]),
        "dino_train_features": rng.normal(size=(12, 6)).astype(np.float32),
        "dino_train_labels": np.array([3, 1, 3, 0, 1, 3, 0, 0, 1, 3, 1, 0], dtype=np.int64),
        "dino_test_features": rng.normal(size=(5, 6)).astype(np.float32),
        "dino_test_labels": np.array([1, 0, 3, 3, 1], dtype=np.int64),
        "vissl_train_heads": rng.normal(size=(10, 6)).astype(np.float32),
        "vissl_train_res5": rng.normal(size=(10, 2, 1, 3)).astype(np.float32),
        "vissl_train_targets": np.array([4, 4, 7, 1, 7, 4, 1, 1, 7, 4], dtype=np.int64),
        "vissl_test_heads": rng.normal(size=(4, 6)).astype(np.float32),
        "vissl_test_targets": np.array([7, 1, 4, 4], dtype=np.int64),
    }


def make(out: Path) -> None:
    t = truth()
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "tiny_features.npy", t["npy_features"])
    np.save(out / "tiny_labels.npy", t["npy_labels"])
    np.savez(
        out / "tiny.npz", features=t["npz_features"], labels=t["npz_labels"], emb=t["npz_features"], y=t["npz_labels"]
    )

    import torch

    dino = out / "dino_dump"
    dino.mkdir(exist_ok=True)
    for split in ("train", "test"):
        torch.save(torch.from_numpy(t[f"dino_{split}_features"]), dino / f"{split}feat.pth")
        torch.save(torch.from_numpy(t[f"dino_{split}_labels"]), dino / f"{split}labels.pth")

    vissl = out / "vissl"
    vissl.mkdir(exist_ok=True)
    # a distributed sampler deals samples round-robin and pads rank 1 with sample 0
    shards = {
        "train": [np.arange(0, 10, 2), np.array([1, 3, 5, 7, 9, 0])],
        "test": [np.array([0, 2]), np.array([1, 3])],
    }
    for split, rank_inds in shards.items():
        layers = ("heads", "res5") if split == "train" else ("heads",)
        for rank, inds in enumerate(rank_inds):
            for layer in layers:
                stem = vissl / f"rank{rank}_chunk0_{split}_{layer}"
                np.save(f"{stem}_features.npy", t[f"vissl_{split}_{layer}"][inds])
                np.save(f"{stem}_targets.npy", t[f"vissl_{split}_targets"][inds].reshape(-1, 1))
                np.save(f"{stem}_inds.npy", inds)


if __name__ == "__main__":
    make(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
