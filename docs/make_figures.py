#!/usr/bin/env python3
"""Regenerate the figures of the docs from the sample store, with the commands a user would type.

Each figure is written by ``nnk`` itself (``sweep --plot``), so the docs show exactly
what the command draws; never edit the images by hand, rerun this script:

    python docs/make_figures.py            # from the repository root; needs the plot extra

Figures written (into ``docs/``):

* ``sweep-fashion-mnist.png``: NNK and weighted k-NN top-1 versus k (10 to 200) on the
  sample store's val split, each with its 95 % Wilson interval, the best k marked;
* ``sweep-temperatures-fashion-mnist.png``: the same for three temperatures of weighted
  k-NN (one line per T), with the k and T selected on train (leave-one-out) marked
  beside the optimistic best on val.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STORE = "sample_data/fashion-mnist.h5"
TITLE = "Fashion-MNIST sample: val, train 10,000 rows"

#: figure file (in docs/) -> the nnk arguments that draw it
FIGURES = {
    "sweep-fashion-mnist.png": ["sweep", STORE, "--k", "10..200:10", "--title", TITLE],
    "sweep-temperatures-fashion-mnist.png": [
        "sweep",
        STORE,
        "--k",
        "1,5,10..100:10",
        "--temperature",
        "0.02,0.07,0.2",
        "--select-on",
        "train",
        "--title",
        TITLE + ", three temperatures",
    ],
}


def main() -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for name, args in FIGURES.items():
        argv = [*args, "--plot", f"docs/{name}", "-q"]
        sys.stdout.write("nnk " + shlex.join(argv) + "\n")
        sys.stdout.flush()
        done = subprocess.run([sys.executable, "-m", "nnkcli", *argv], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            sys.stderr.write(f"failed with exit code {done.returncode}: docs/{name} not written\n")
            return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
