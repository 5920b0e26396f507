"""The settings of a linear probe (``nnk probe``, ``nnk report``), declared once.

``ProbeOptions`` carries how the regularisation C is chosen on the train split and how each
fit runs; the command line's options are generated from these declarations.

The default grid is DINOv2's: ``C_POWER_RANGE = torch.linspace(-6, 5, 45)``, C = 10 ** that
(facebookresearch/dinov2, ``dinov2/eval/log_regression.py``, line 42), as is the 10 % of the
train split held out to choose C (its ``eval_log_regression``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnkcli.errors import OptionError
from nnkcli.settings import Accepts, Settings, at_least, flag, open_unit_interval, positive_float, seed, setting

#: the name of the default grid on the command line
DEFAULT_GRID_NAME = "dinov2"
#: DINOv2's 45 values of C, 1e-6 .. 1e5
DEFAULT_C_GRID: tuple[float, ...] = tuple(float(c) for c in 10.0 ** np.linspace(-6, 5, 45))


def c_grid(value, name) -> tuple[float, ...]:
    """``"dinov2"`` (the default grid), ``"LO:HI:N"`` (N values log-spaced from LO to HI, both included),
    a comma list (``"0.1,1,10"``) or a sequence of numbers -> the distinct values > 0, increasing."""
    if isinstance(value, str):
        text = value.strip()
        if text == DEFAULT_GRID_NAME:
            return DEFAULT_C_GRID
        if ":" in text:
            parts = text.split(":")
            try:
                lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
                if len(parts) != 3:
                    raise ValueError
            except (ValueError, IndexError):
                raise OptionError(name, value, "expected LO:HI:N", hint="e.g. 1e-3:1e3:13") from None
            if not (lo > 0 and hi >= lo and np.isfinite(hi) and n >= 1):
                raise OptionError(name, value, "needs 0 < LO <= HI and N >= 1", hint="e.g. 1e-3:1e3:13")
            return tuple(float(c) for c in np.unique(np.geomspace(lo, hi, n)))
        try:
            values = [float(part) for part in text.split(",")]
        except ValueError:
            raise OptionError(
                name, value, "expected dinov2, LO:HI:N or a comma list of numbers", hint="e.g. 0.1,1,10"
            ) from None
    elif isinstance(value, (list, tuple, np.ndarray)):
        values = list(value)
    else:
        values = [value]
    if not values:
        raise OptionError(name, value, "the grid is empty")
    return tuple(sorted({positive_float(v, name) for v in values}))


@dataclass(frozen=True)
class ProbeOptions(Settings):
    """How the linear probe chooses C and fits.

    Parameters
    ----------
    c_grid : str or sequence of float, default="dinov2"
        The values of C tried, increasing (each fit warm-starts from the previous one).
    val_fraction : float, default=0.1
        Part of each class's train rows held out to choose C.
    seed : int, default=0
        Seed of the held-out draw.
    patience : int, default=5
        Stop the path once this many values of C in a row have not beaten the best held-out
        top-1 (0: try the whole grid).
    fit_patience : int, default=3
        During the selection, stop a fit once its held-out top-1 has stayed within 0.1 % of the
        held-out rows for this many checks in a row (one check every 2 iterations); the fit's
        held-out top-1 is what the selection reads. 0: fit every C to the tolerance. The refit
        always runs to the tolerance.
    precondition : bool, default=True
        Precondition L-BFGS with the features' covariance (the same objective and minimiser).
    normalize : bool, default=True
        L2-normalise every row first (the geometry of the k-NN and NNK evaluation).
    tol : float, default=1e-4
        L-BFGS's gradient tolerance (scikit-learn's ``tol``).
    max_iter : int, default=1000
        The most L-BFGS iterations of one fit.
    """

    c_grid: Accepts[str | tuple[float, ...] | list[float], tuple[float, ...]] = setting(
        DEFAULT_C_GRID,
        c_grid,
        metavar="GRID",
        shown=DEFAULT_GRID_NAME,
        help="Values of C, the inverse L2 strength (as sklearn's C), tried on the held out rows: dinov2 "
        "(DINOv2's 45 values), LO:HI:N (N log spaced values) or a comma list.",
    )
    val_fraction: float = setting(
        0.1,
        open_unit_interval,
        metavar="F",
        type=float,
        help="Part of each class's train rows held out to choose C.",
    )
    seed: int = setting(0, seed, metavar="S", type=int, help="Seed of the held-out rows.")
    patience: int = setting(
        5,
        at_least(0),
        metavar="N",
        type=int,
        help="Stop the C path after N values of C without a better accuracy on the held out rows "
        "(0: try the whole grid).",
    )
    fit_patience: int = setting(
        3,
        at_least(0),
        metavar="N",
        type=int,
        help="Stop a selection fit once its top-1 on the held out rows has not moved for N checks, one every "
        "2 iterations (0: fit each C to the tolerance; the refit always is).",
    )
    precondition: bool = setting(True, flag, option=None)
    normalize: bool = setting(True, flag, option=None)
    tol: float = setting(1e-4, positive_float, metavar="TOL", type=float, help="L-BFGS gradient tolerance.")
    max_iter: int = setting(1000, at_least(1), metavar="N", type=int, help="Most L-BFGS iterations per fit.")
