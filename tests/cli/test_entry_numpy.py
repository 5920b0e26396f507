"""The console script turns off numpy's huge-page advice before numpy loads (a user's own setting wins), and a
library caller's numpy keeps its default."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import {first}, numpy\n"
    "core = getattr(numpy, '_core', None) or numpy.core\n"
    "print(core.multiarray._get_madvise_hugepage())\n"
)


def _advice(first: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(first=first)], env={**environ, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="numpy advises huge pages on Linux only")
def test_the_command_line_turns_numpys_huge_page_advice_off_unless_told():
    assert _advice("nnkcli.entry") == "False"
    assert _advice("nnkcli.entry", NUMPY_MADVISE_HUGEPAGE="1") == "True"  # the user's setting wins
    assert _advice("nnkcli") == _advice("sys")  # importing the library changes nothing
