"""``python -m nnkcli`` runs the ``nnk`` command line."""

import os
import sys

try:  # a Ctrl-C while the command line loads is an interrupt (130), not a traceback
    from nnkcli.cli import main
except KeyboardInterrupt:  # pragma: no cover - exercised by the fault-injection tests
    sys.stderr.write("Interrupted.\n")
    os._exit(130)

if __name__ == "__main__":  # pragma: no cover
    main()
