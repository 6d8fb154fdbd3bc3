"""The one definition of a percentile in this project, so that figures from the probes, the monitor and the
benchmarks can be compared.

Linear interpolation between the two closest ranks of the sorted values
(``statistics.quantiles(method="inclusive")``, the same as numpy's default):
p50 of [1, 2, 3, 4] is 2.5, p95 of [0, 10] is 9.5. One value is its own
percentile; no value has none (NaN).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0 < q < 1, in hundredths) of ``values``, linearly interpolated."""
    if not 0 < q < 1:
        raise ValueError(f"a quantile lies strictly between 0 and 1, not {q}")
    if len(values) < 2:
        return float(values[0]) if values else math.nan
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]
