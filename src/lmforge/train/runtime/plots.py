"""PNG plots of a run's curves (`plot_loss: true`)."""

from __future__ import annotations

import logging
import os

from lmforge.config.stages import STAGES

logger = logging.getLogger(__name__)


def smooth(values: list[float], max_weight: float = 0.9) -> list[float]:
    """Exponential moving average; the weight grows with the number of points so short runs do not lag."""
    if len(values) < 10:
        return list(values)
    weight = min(max_weight, len(values) / (len(values) + 40))
    out, last = [], values[0]
    for v in values:
        last = last * weight + (1 - weight) * v
        out.append(last)
    return out


def stage_curves(stage: str) -> tuple[str, ...]:
    """The curves worth watching in a stage (its registry entry; train and eval): a key absent from the log is not
    plotted."""
    extra = STAGES[stage].curves
    return ("loss", "eval_loss", *extra, *(f"eval_{k}" for k in extra))


# a mixture of experts' router balance (1 is even, for both), in every stage
EXPERT_LOAD_CURVES = ("expert_load_max_over_mean", "expert_load_entropy")


def plot_curves(output_dir: str, log: list[dict], keys: tuple[str, ...] = ("loss", "eval_loss")) -> list[str]:
    """One PNG per key that has values in the log (`training_<key>.png`, `/` written as `_`); returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key in keys:
        points = [(r["step"], r[key]) for r in log if key in r]
        if not points:
            continue
        steps, values = zip(*points, strict=True)
        fig = plt.figure(figsize=(6.4, 4.0))
        plt.plot(steps, values, color="#1f77b4", alpha=0.4, label="original")
        if len(values) >= 10:
            plt.plot(steps, smooth(list(values)), color="#1f77b4", label="smoothed")
        plt.title(f"{key} of {os.path.basename(os.path.abspath(output_dir))}")
        plt.xlabel("step")
        plt.ylabel(key)
        plt.legend()
        path = os.path.join(output_dir, f"training_{key.replace('/', '_')}.png")
        fig.savefig(path, format="png", dpi=100)
        plt.close(fig)
        written.append(path)
        logger.info("Plot saved: %s", path)
    return written
