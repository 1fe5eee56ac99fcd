"""Plots of the LR range test (needs matplotlib: ``pip install lightning-clr[plot]``).

matplotlib is imported only when a plot is made, and only its object-oriented API (no pyplot, no GUI
backend), so plotting works headless and in worker processes.

Example:
    >>> from lightning_clr.range_test import RangeTestResult
    >>> r = RangeTestResult(lrs=[1e-3, 1e-2, 1e-1], losses=[1.0, 0.6, 2.0], smoothed_losses=[1.0, 0.8, 1.2],
    ...                     base_lr=1e-3, max_lr=4e-3, rule="smith")
    >>> fig = plot_range_test(r)  # doctest: +SKIP
    >>> fig.savefig("lr_range_test.png")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from lightning_clr.range_test._types import RangeTestResult

__all__ = ["plot_range_test"]


def _require_matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "Plotting the LR range test needs matplotlib: pip install lightning-clr[plot]"
        ) from err
    return matplotlib, Figure


def plot_range_test(result: RangeTestResult, ax: Optional[Axes] = None, show_metric: bool = True) -> Figure:
    """Loss against LR on a log-x axis (raw and smoothed), with ``base_lr`` and ``max_lr`` marked.

    When the result has a metric curve and ``show_metric`` is set, it is drawn on a second y axis.
    Returns the Figure (a new one unless ``ax`` is given).
    """
    _, figure_cls = _require_matplotlib()
    if ax is None:
        fig = figure_cls(figsize=(7, 4.5), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    lrs = result.lrs
    ax.plot(lrs, result.losses, color="0.7", linewidth=1, label="loss")
    ax.plot(lrs, result.smoothed_losses, color="C0", linewidth=2, label="smoothed loss")
    ax.set_xscale("log")
    if len(result.group_lrs) > 1:  # the curve is the reference group's; the others moved by their fixed ratio
        ax.set_xlabel(f"learning rate of param group {result.reference_group} (the largest; others keep their ratio)")
    else:
        ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    finite = [v for v in result.smoothed_losses if v == v and abs(v) != float("inf")]
    if finite:  # keep a divergence spike from squashing the interesting part of the curve
        low, high, first = min(finite), max(finite), finite[0]
        top = min(high, first + max(first - low, 0.1 * abs(first)))
        margin = 0.05 * ((top - low) or abs(low) or 1.0)
        ax.set_ylim(low - margin, top + margin)
    ax.axvline(result.base_lr, color="C2", linestyle="--", label=f"base_lr = {result.base_lr:.3g}")
    ax.axvline(result.max_lr, color="C3", linestyle="--", label=f"max_lr = {result.max_lr:.3g}")
    handles, labels = ax.get_legend_handles_labels()
    if show_metric and result.metric_values:
        ax2 = ax.twinx()
        ax2.plot(lrs, result.smoothed_metric, color="C1", linewidth=1.5, label=f"{result.metric_name} (smoothed)")
        ax2.set_ylabel(result.metric_name or "metric")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="best", fontsize="small")
    title = f"LR range test ({result.rule!r} rule)"
    if result.fallback:
        title += ": fallback bounds"
    ax.set_title(title)
    return fig
