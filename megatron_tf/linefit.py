"""A least-squares line and its R^2: shared by the profiler's linearity check and the GPU kit.

Plain Python on purpose: the GPU acceptance kit imports it on a machine that has torch but not
this project's other dependencies.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["fit_line"]


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least-squares line y = intercept + slope * x and its R^2 (1 when y is constant)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx if sxx else 0.0
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return {"slope": slope, "intercept": intercept, "r2": r2}
