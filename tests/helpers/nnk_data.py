"""The tests' data builders, once: labelled Gaussian mixtures, two-split feature stores, NNK problems.

Every builder is deterministic in its arguments, so a test that asserts numbers of its data
(an accuracy, a tie, a rank-deficient kernel) keeps exactly that data; a variant of the data
is a parameter here, never a second copy of the builder.
"""

from __future__ import annotations

import numpy as np

NAMES = ["a", "b", "c", "d"]


def mixture(n, d, seed, *, n_classes=4, noise=1.2, means_seed=99):
    """``n`` float32 rows (n, d) around ``n_classes`` Gaussian means, and their int labels (n,).

    The means come from their own generator (``means_seed``), so splits drawn with different
    ``seed`` s share them; ``noise`` is the standard deviation around each mean.
    """
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(means_seed).normal(size=(n_classes, d))
    y = rng.integers(0, n_classes, n)
    return (means[y] + noise * rng.normal(size=(n, d))).astype(np.float32), y


def two_splits(n_train, n_query, d, seed, *, n_classes=4, noise=1.3):
    """Train and query rows (float32) and labels of one mixture drawn from one generator.

    Returns ``(xt, yt, xq, yq)``; the draws go: means, train labels, query labels, train rows,
    query rows.
    """
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, d))
    yt, yq = rng.integers(0, n_classes, n_train), rng.integers(0, n_classes, n_query)
    xt = (means[yt] + noise * rng.normal(size=(n_train, d))).astype(np.float32)
    xq = (means[yq] + noise * rng.normal(size=(n_query, d))).astype(np.float32)
    return xt, yt, xq, yq


def make_store(
    path,
    *,
    n_train=300,
    n_query=60,
    d=12,
    noise=1.2,
    query_noise=None,
    train_seed=0,
    query_seed=1,
    n_classes=4,
    class_names=NAMES,
    train=None,
    query=None,
    shuffle_train=False,
    query_labels=None,
    ids=None,
    train_attrs=None,
    query_attrs=None,
):
    """A feature store at ``path`` with a ``train`` and a ``val`` split; returns ``path``.

    By default both splits are drawn by :func:`mixture` (``n_train``/``n_query`` rows of
    dimension ``d``, seeds ``train_seed``/``query_seed``; ``query_noise`` defaults to
    ``noise``). ``train`` / ``query`` replace a drawn split by given (rows, labels).
    ``shuffle_train`` permutes the train labels, seeded: features that no longer go with their
    labels, like a broken checkpoint. ``query_labels`` maps the query labels (e.g. to mark some
    unlabelled). ``ids``: the query ids, or a format string for them (``"q{:03d}"``).
    ``class_names=None`` stores the int labels as they are.
    """
    from nnkcli.storage.store import write_split

    if class_names is not None:
        n_classes = len(class_names)
    if train is None:
        train = mixture(n_train, d, train_seed, n_classes=n_classes, noise=noise)
    if shuffle_train:
        train = (train[0], np.random.default_rng(3).permutation(train[1]))
    if query is None:
        query = mixture(
            n_query, d, query_seed, n_classes=n_classes, noise=noise if query_noise is None else query_noise
        )
    xq, yq = query
    if query_labels is not None:
        yq = query_labels(yq)
    write_split(path, "train", *train, class_names=class_names, source="test", attrs=train_attrs)
    if isinstance(ids, str):
        ids = [ids.format(i) for i in range(len(yq))]
    write_split(path, "val", xq, yq, ids=ids, class_names=class_names, source="test", attrs=query_attrs)
    return path


def unit(x):
    """Rows scaled to unit norm along the last axis."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def nnk_problem(seed, B, k, d, kind="random", *, dtype=np.float64, collinear_exponents=(-6, -1)):
    """A batch of unit-norm queries q (B, d) and neighbors X (B, k, d) of a given flavour, in ``dtype``.

    ``kind``: ``"random"`` (isotropic), ``"clustered"`` (all in one orthant, like image
    features), ``"collinear"`` (neighbors a distance 10**e apart, e drawn from
    ``collinear_exponents`` as an integer range) or ``"duplicates"`` (random, with about a third
    of the neighbors exact copies of others: a singular G).
    """
    rng = np.random.default_rng(seed)
    if kind == "clustered":
        q = unit(np.abs(rng.standard_normal((B, d))) + 2)
        X = unit(np.abs(rng.standard_normal((B, k, d))) + 2)
    elif kind == "collinear":
        base = unit(rng.standard_normal((B, 1, d)))
        eps = 10.0 ** rng.integers(*collinear_exponents)
        X = unit(base + eps * rng.standard_normal((B, k, d)))
        q = unit(base[:, 0] + eps * rng.standard_normal((B, d)))
    else:
        q = unit(rng.standard_normal((B, d)))
        X = unit(rng.standard_normal((B, k, d)))
    if kind == "duplicates" and k > 1:
        src = rng.integers(0, k, size=max(1, k // 3))
        X[:, rng.integers(0, k, size=src.size)] = X[:, src]
    return q.astype(dtype), X.astype(dtype)
