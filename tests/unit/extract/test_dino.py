"""Importer refusals that used to be silent or misworded: '1.5' in a text labels file, a blocked
pickle global in torch 2.13's wording, a DINO dump loaded whole, a VISSL folder missing a rank."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnkcli.errors import InputError
from nnkcli.extract import load_features, read_labels
from nnkcli.storage.labels import map_labels

REPO = Path(__file__).resolve().parents[3]


# -- text labels are numbers when every line is a number -------------------------------------
def test_text_labels_with_a_fraction_are_refused_like_npy(tmp_path):
    txt = tmp_path / "labels.txt"
    txt.write_text("0\n1.5\n2\n")
    npy = tmp_path / "labels.npy"
    np.save(npy, np.array([0, 1.5, 2]))
    messages = []
    for path in (txt, npy):
        with pytest.raises(InputError) as info:
            map_labels(read_labels(path), n=3)
        messages.append(info.value.message)
    assert messages[0] == messages[1] == "labels must be integers or strings; got the non-integer value 1.5 at row 1"


def test_text_labels_of_integer_valued_floats_and_names(tmp_path):
    txt = tmp_path / "labels.txt"
    txt.write_text("0\n2.0\n-1\n")
    assert map_labels(read_labels(txt), n=3).ids.tolist() == [0, 1, -1]
    names = tmp_path / "names.txt"
    names.write_text("cat\n1.5\ndog\n")  # not all numbers: class names, as before
    assert read_labels(names).tolist() == ["cat", "1.5", "dog"]


# -- blocked pickle globals, in either wording -------------------------------------------------
@pytest.mark.parametrize(
    "message, name",
    [
        (
            "Weights only load failed ... Unsupported global: GLOBAL fractions.Fraction was not an allowed global",
            "fractions.Fraction",
        ),
        (
            "Weights only load failed ... unsupported GLOBAL fractions.Fraction, use add_safe_globals",
            "fractions.Fraction",
        ),
        ("Weights only load failed ... UNSUPPORTED GLOBAL", ""),
        ("invalid load key, 'x'.", None),
    ],
)
def test_blocked_global_is_read_from_either_wording(message, name):
    from nnkcli.extract.torch_checkpoints import blocked_global

    assert blocked_global(message) == name


def test_checkpoint_refusal_says_what_was_blocked(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from nnkcli.extract.torch_checkpoints import read_checkpoint

    path = tmp_path / "ck.pth"
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)

    def refuse(*args, **kwargs):  # torch 2.13's wording for a legacy-format file
        raise pickle.UnpicklingError("Weights only load failed. unsupported GLOBAL mymodule.Evil")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(InputError) as info:
        read_checkpoint(path)
    assert info.value.message == f"checkpoint {path} holds pickled Python objects beyond tensors (mymodule.Evil)"
    assert "--trust-checkpoint" in info.value.hint


def test_dino_tensor_with_a_blocked_global_is_named(tmp_path):
    torch = pytest.importorskip("torch")
    import fractions

    path = tmp_path / "trainfeat.pth"
    torch.save({"x": fractions.Fraction(1, 3)}, path)
    from nnkcli.extract.dino import load_tensor

    with pytest.raises(InputError, match=r"holds a pickled Python object \(fractions.Fraction\)"):
        load_tensor(path, "features")


# -- DINO dumps are memory-mapped --------------------------------------------------------------
_RSS = (
    "import resource, sys, numpy as np, torch\n"
    "from nnkcli.extract.dino import load_tensor\n"
    "def rss():\n"
    "    return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
    "before = rss()\n"
    "t = load_tensor(sys.argv[1], 'features')\n"
    "x = t.numpy()\n"
    "first = float(x[:10].sum())\n"
    "print(rss() - before, x.shape[0])\n"
)


def test_dino_dump_is_memory_mapped_not_loaded_whole(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "trainfeat.pth"
    torch.save(torch.ones(50_000, 512), path)  # 98 MiB
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _RSS, str(path)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    grown, rows = (int(v) for v in done.stdout.split())
    assert rows == 50_000
    assert grown < 20 * 2**20  # was ~98 MiB: the whole tensor read into memory


def test_legacy_dino_dump_still_loads_whole_with_a_warning(tmp_path, caplog):
    torch = pytest.importorskip("torch")
    from nnkcli.extract.dino import load_tensor

    path = tmp_path / "trainfeat.pth"
    torch.save(torch.arange(6.0).reshape(3, 2), path, _use_new_zipfile_serialization=False)
    with caplog.at_level("WARNING", logger="nnkcli"):
        assert load_tensor(path, "features").shape == (3, 2)
    assert "cannot be memory-mapped" in caplog.text


# -- VISSL folders with a rank missing ---------------------------------------------------------
def _vissl(folder: Path, n=30, world=3, d=4, drop_rank=None):
    folder.mkdir()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.arange(n) % 5
    for rank in range(world):
        if rank == drop_rank:
            continue
        inds = np.arange(rank, n, world)  # the distributed sampler's rank::world split
        stem = folder / f"rank{rank}_chunk0_train_heads"
        np.save(f"{stem}_features.npy", x[inds])
        np.save(f"{stem}_targets.npy", y[inds])
        np.save(f"{stem}_inds.npy", inds)
    return x


def test_vissl_folder_missing_a_rank_is_refused_naming_it(tmp_path):
    folder = tmp_path / "vissl"
    _vissl(folder, drop_rank=1)
    with pytest.raises(InputError) as info:
        load_features(folder, split="train")
    assert info.value.message == (
        f"VISSL split 'train' layer 'heads' in {folder} has 10 of 30 dataset indices missing (first: index 1)"
    )
    assert "likely missing: rank1_chunk*_train_heads_*.npy" in info.value.hint
    assert "--allow-gaps" in info.value.hint


def test_vissl_gaps_import_with_allow_gaps(tmp_path, caplog):
    folder = tmp_path / "vissl"
    x = _vissl(folder, drop_rank=2)
    with caplog.at_level("WARNING", logger="nnkcli"):
        imported = load_features(folder, split="train", allow_gaps=True)
    kept = [i for i in range(30) if i % 3 != 2]
    np.testing.assert_array_equal(imported.features[0 : len(kept)], x[kept])
    assert "importing the 20 rows present (--allow-gaps)" in caplog.text


def test_complete_vissl_folder_needs_no_flag(tmp_path):
    folder = tmp_path / "vissl"
    x = _vissl(folder)
    np.testing.assert_array_equal(load_features(folder, split="train").features[0:30], x)


def test_allow_gaps_on_the_cli(runner, tmp_path):
    from nnkcli.cli import cli

    folder = tmp_path / "vissl"
    _vissl(folder, drop_rank=0)
    store = tmp_path / "s.h5"
    result = runner.invoke(cli, ["extract", str(store), "--split", "train", "--from", str(folder)])
    assert result.exit_code == 1 and "likely missing: rank0_chunk*" in result.stderr
    assert not store.exists()
    result = runner.invoke(cli, ["extract", str(store), "--split", "train", "--from", str(folder), "--allow-gaps"])
    assert result.exit_code == 0, result.stderr


def _peak_rss_of_extract(dump: Path, store: Path) -> int:
    code = (
        "import resource, sys\n"
        "from nnkcli.cli import run\n"
        "code = run(['extract', sys.argv[1], '--split', 'train', '--from', sys.argv[2], '-q'])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(store), str(dump)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.slow
def test_extract_of_a_dino_dump_streams_it(tmp_path):
    torch = pytest.importorskip("torch")
    small, big = tmp_path / "small", tmp_path / "big"
    for folder, rows in ((small, 1000), (big, 80_000)):
        folder.mkdir()
        torch.save(torch.randn(rows, 512), folder / "trainfeat.pth")  # big: 156 MiB
        torch.save(torch.arange(rows) % 10, folder / "trainlabels.pth")
    base = _peak_rss_of_extract(small / "trainfeat.pth", tmp_path / "a.h5")
    peak = _peak_rss_of_extract(big / "trainfeat.pth", tmp_path / "b.h5")
    # the peak grows by about one 32 MB block and the labels, not by the 156 MiB of features
    assert peak - base < 80 * 2**20, (base, peak)
