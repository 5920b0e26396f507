"""Query shards and their merge (nnkcli.evaluation.partials): equal to one unsharded run, coverage checked."""

from __future__ import annotations

import pytest

from nnk_data import make_store, two_splits
from nnkcli.errors import InputError, OptionError
from nnkcli.evaluation.classification import classify
from nnkcli.evaluation.merging import merge_parts
from nnkcli.evaluation.partials import shard_rows
from nnkcli.evaluation.sweeps import sweep


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("parts") / "p.h5"
    xt, yt, xq, yq = two_splits(160, 5, 10, seed=21, noise=1.4)
    yq[1] = -1  # an unlabelled query
    return make_store(path, train=(xt, yt), query=(xq, yq))


def _strip(doc):
    """What must be equal: everything but timing and where files went."""
    return {k: v for k, v in doc.items() if k not in ("timing", "predictions_path", "partial_path", "merged_shards")}


@pytest.mark.parametrize("n_shards", [1, 3, 7])  # 7 > the 5 queries: empty shards
def test_classify_shards_merge_to_the_unsharded_document(store, tmp_path, n_shards):
    whole = classify(store, k=6, per_class=True)
    parts = []
    for i in range(n_shards):
        part = tmp_path / f"c{i}.h5"
        doc = classify(store, k=6, per_class=True, shard=(i, n_shards), predictions_path=part)
        assert doc["shard"] == {"shard": i, "n_shards": n_shards, "rows": list(shard_rows(5, i, n_shards))}
        parts.append(part)
    merged = merge_parts(parts[::-1], out=tmp_path / "all.h5")  # any order on the command line
    assert _strip(merged) == _strip(whole)
    assert merged["merged_shards"] == n_shards
    again = merge_parts([tmp_path / "all.h5"])  # the merged file is one part covering everything
    assert _strip(again) == _strip(whole)


@pytest.mark.parametrize("n_shards", [1, 3, 7])
def test_sweep_shards_merge_to_the_unsharded_document(store, tmp_path, n_shards):
    whole = sweep(store, k_values="2..12:2", query_split="train", exclude_self=True).document
    parts = []
    for i in range(n_shards):
        parts.append(tmp_path / f"s{i}.h5")
        sweep(
            store,
            k_values="2..12:2",
            query_split="train",
            exclude_self=True,
            shard=(i, n_shards),
            partial_path=parts[-1],
        )
    merged = merge_parts(parts)
    assert _strip(merged) == _strip(whole)
    assert merged["best"] == whole["best"] and "tied_k" in merged["best"]["nnk"]


def test_missing_repeated_and_foreign_parts_are_refused(store, tmp_path):
    parts = []
    for i in range(3):
        parts.append(tmp_path / f"c{i}.h5")
        classify(store, k=4, shard=(i, 3), predictions_path=parts[-1])
    with pytest.raises(InputError, match=r"1 of 3 shards are missing: 1/3 \(queries 2:4\)"):
        merge_parts([parts[0], parts[2]])
    with pytest.raises(InputError, match="shard 2/3 is given twice"):
        merge_parts([*parts, parts[2]])
    other = tmp_path / "other.h5"
    classify(store, k=4, temperature=0.1, shard=(1, 3), predictions_path=other)
    with pytest.raises(InputError, match="different parameters"):
        merge_parts([parts[0], other, parts[2]])
    four = tmp_path / "four.h5"
    classify(store, k=4, shard=(1, 4), predictions_path=four)
    with pytest.raises(InputError, match="different n_shards"):
        merge_parts([parts[0], four, parts[2]])
    classify(store, k=4, predictions_path=tmp_path / "pred.h5")  # a predictions file is not a part
    with pytest.raises(InputError, match="is not a partial result file"):
        merge_parts([tmp_path / "pred.h5"])


def test_shard_needs_an_output_and_a_valid_spec(store):
    with pytest.raises(OptionError, match="^shard needs predictions_path"):
        classify(store, k=4, shard=(0, 2))
    for bad in ("3/3", "1/0", "x", (2, 1)):
        with pytest.raises(OptionError):
            classify(store, k=4, shard=bad)


def test_sweep_out_without_shard_is_one_whole_part(store, tmp_path):
    doc = sweep(store, k_values=[3, 6], partial_path=tmp_path / "all.h5").document
    assert doc["partial_path"] == str(tmp_path / "all.h5")
    assert _strip(merge_parts([tmp_path / "all.h5"])) == _strip(doc)


@pytest.mark.parametrize("block_rows", [1, 2, 1000])
def test_parts_are_read_in_blocks_with_the_same_result(store, tmp_path, block_rows):
    parts = [tmp_path / f"s{i}.h5" for i in range(2)]
    for i, part in enumerate(parts):
        sweep(store, k_values="2,4", shard=(i, 2), partial_path=part)
    whole = merge_parts(parts, out=tmp_path / "whole.h5").to_dict()
    merged = merge_parts(parts, out=tmp_path / f"b{block_rows}.h5", block_rows=block_rows).to_dict()
    assert _strip(merged) == _strip(whole)
    import h5py

    with h5py.File(tmp_path / "whole.h5", "r") as a, h5py.File(tmp_path / f"b{block_rows}.h5", "r") as b:
        names: list[str] = []
        a.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        assert names and all((a[n][()] == b[n][()]).all() and a[n].dtype == b[n].dtype for n in names)
