"""``python -m nnkcli`` runs the ``nnk`` command line."""

# first: a Ctrl-C while the command line loads exits 130 (see nnkcli.entry)
from nnkcli.entry import main

if __name__ == "__main__":  # pragma: no cover
    main()
