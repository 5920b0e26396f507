"""Data installed with nnkcli: the sample feature store.

``SAMPLE_STORE`` is a small real store to try the commands and the API on: Fashion-MNIST, 10,000 train and
2,000 val rows of 64-d PCA features, 10 classes (built by ``sample_data/make_fashion_mnist.py``; in a checkout
``sample_data/fashion-mnist.h5`` is the same file). After ``pip install nnkcli``::

    nnk info "$(python -c 'import nnkcli.data; print(nnkcli.data.SAMPLE_STORE)')"
"""

from __future__ import annotations

from pathlib import Path

#: the path of the sample store (an nnkcli feature store with splits ``train`` and ``val``)
SAMPLE_STORE = Path(__file__).with_name("fashion-mnist.h5")
