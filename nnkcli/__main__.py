"""``python -m nnkcli`` runs the ``nnk`` command line."""

from nnkcli.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
