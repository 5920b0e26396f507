"""``--search-kernel``: every scoring command takes it, the JSON timing names the kernel that ran and its
fallbacks, the bf16 kernel's results and per-query files equal the fp32 kernel's, and bf16 where it cannot
run is an error (exit 1, as ``--device cuda`` without a GPU)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from nnk_cli import invoke


def _arrays(path) -> dict:
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return found


def _run(runner, *args):
    res = invoke(runner, *args, "--format", "json")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def test_fp32_kernel_is_named_in_the_timing(runner, store):
    doc = _run(runner, "classify", store, "--k", "5", "--search-kernel", "fp32")
    assert doc["timing"]["search_kernel"] == "fp32"
    assert doc["timing"]["search_fallbacks"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("command", ["classify", "sweep"])
def test_bf16_results_and_files_equal_fp32s(runner, store, tmp_path, command, bf16_library):
    k = ["--k", "7"] if command == "classify" else ["--k", "3,7,20"]
    docs, files = {}, {}
    for kernel in ("fp32", "bf16"):
        out = ["--out", tmp_path / f"{kernel}.h5"] if command == "classify" else []
        docs[kernel] = _run(runner, command, store, *k, "--search-kernel", kernel, "--chunk-size", "17", *out)
        if out:
            files[kernel] = _arrays(out[1])
    assert docs["bf16"]["timing"]["search_kernel"] == "bf16"
    assert docs["bf16"]["results"] == docs["fp32"]["results"]
    for key, value in files.get("fp32", {}).items():
        np.testing.assert_array_equal(files["bf16"][key], value, err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_bf16_leave_one_out_equals_fp32(runner, store, threads, bf16_library):
    """exclude_self (the query split is the train split) and sweep's selection on train rows, any thread count."""
    args = ["--k", "1,5,9", "--query-split", "train", "--exclude-self", "--threads", threads]
    fp32 = _run(runner, "sweep", store, *args, "--search-kernel", "fp32", "--select-on", "train")
    bf16 = _run(runner, "sweep", store, *args, "--search-kernel", "bf16", "--select-on", "train")
    assert bf16["results"] == fp32["results"] and bf16["best"] == fp32["best"]


def test_bf16_where_it_cannot_run_is_an_error(runner, store, monkeypatch):
    from nnkcli import index_bf16

    monkeypatch.setattr(index_bf16, "cpu_flags", lambda: {"avx2"})
    index_bf16.bf16_unavailable.cache_clear()
    try:
        res = invoke(runner, "classify", store, "--k", "5", "--search-kernel", "bf16")
        auto = _run(runner, "classify", store, "--k", "5", "--search-kernel", "auto")
    finally:
        index_bf16.bf16_unavailable.cache_clear()
    assert res.exit_code == 1
    assert "Error: --search-kernel bf16 cannot run here: this CPU has no bfloat16 instructions" in res.stderr
    assert auto["timing"]["search_kernel"] == "fp32"  # auto never needs bf16


@pytest.mark.slow
def test_auto_runs_bf16_on_a_large_search_with_the_same_results(runner, store, monkeypatch, bf16_library):
    """auto picks bf16 once the search per thread reaches AUTO_BF16_WORK (lowered here to this store's size)."""
    import nnkcli.index_flat as flat

    small = _run(runner, "classify", store, "--k", "7", "--search-kernel", "auto")
    assert small["timing"]["search_kernel"] == "fp32"  # a small store: loading the library would cost more
    monkeypatch.setitem(flat.AUTO_BF16_WORK, bf16_library, 1)
    large = _run(runner, "classify", store, "--k", "7", "--search-kernel", "auto", "--threads", "2")
    assert large["timing"]["search_kernel"] == "bf16"
    assert large["results"] == small["results"]
