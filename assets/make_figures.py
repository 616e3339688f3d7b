"""Draw the guide's figure of SPEC 1's rule: a tangent and its intercept.

Two panels: ReLU, whose tangent at any point passes through 0 (its intercept is 0, so a
piecewise-linear network has only its biases as terms), and SiLU, whose tangent at
u0 crosses the axis u = 0 at c = f(u0) - u0 f'(u0), the part of the activation's output
its input does not explain. Run from anywhere:

    python assets/make_figures.py          # writes assets/tangent_intercepts.png
"""

import math
from pathlib import Path

from matplotlib.figure import Figure

ASSETS = Path(__file__).resolve().parent


def _silu(u: float) -> float:
    return u / (1 + math.exp(-u))


def _silu_slope(u: float) -> float:
    s = 1 / (1 + math.exp(-u))
    return s + u * s * (1 - s)


def draw(path: Path = ASSETS / "tangent_intercepts.png", u0: float = 2.0) -> Path:
    """Write the two-panel figure to ``path``; ``u0`` is where SiLU's tangent is taken."""
    us = [i / 50 for i in range(-200, 201)]
    figure = Figure(figsize=(8.4, 3.4), dpi=110, layout="constrained")
    relu, silu = figure.subplots(1, 2, sharey=True)
    curves = (
        (relu, "ReLU", [max(u, 0.0) for u in us], 1.5, lambda u: 1.0 if u > 0 else 0.0,
         lambda u: max(u, 0.0)),
        (silu, "SiLU", [_silu(u) for u in us], u0, _silu_slope, _silu),
    )  # fmt: skip
    for axes, name, values, point, slope, f in curves:
        k, value = slope(point), f(point)
        intercept = value - point * k
        axes.axhline(0, color="0.8", linewidth=0.8)
        axes.axvline(0, color="0.8", linewidth=0.8)
        axes.plot(us, values, color="#3b4cc0", linewidth=2, label=name)
        axes.plot(us, [k * u + intercept for u in us], color="#d95f02", linestyle="--",
                  label="tangent at u₀")  # fmt: skip
        axes.plot([point], [value], "o", color="#d95f02")
        axes.plot([0], [intercept], "o", color="#1b9e77", markersize=8,
                  label=f"intercept c = {intercept:+.2f}")  # fmt: skip
        axes.set_xlim(-4, 4)
        axes.set_ylim(-2, 4)
        axes.set_xlabel("u (the activation's input)")
        axes.set_title(f"{name}: tangent at u₀ = {point:g}")
        axes.legend(loc="upper left", fontsize=8)
    relu.set_ylabel("output")
    figure.savefig(path)
    return path


if __name__ == "__main__":
    print(f"wrote {draw()}")
