"""The range test's plot: log-x, both bounds marked, the metric on a second axis."""

from __future__ import annotations

from lightning_clr import RangeTestResult
from lightning_clr.range_test import plot_range_test


def test_plot_marks_both_bounds_on_a_log_axis() -> None:
    r = RangeTestResult(lrs=[1e-4, 1e-3, 1e-2, 1e-1], losses=[1.0, 0.5, 0.3, float("inf")],
                        smoothed_losses=[1.0, 0.7, 0.5, float("nan")], base_lr=2.5e-4, max_lr=1e-3,
                        rule="smith", stopped_early=True, stop_reason="nan")
    fig = r.plot()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "learning rate"
    vertical = {line.get_xdata()[0] for line in ax.get_lines() if len(set(line.get_xdata())) == 1}
    assert vertical == {2.5e-4, 1e-3}


def test_plot_of_several_groups_names_the_reference_group_and_shows_the_metric() -> None:
    r = RangeTestResult(lrs=[1e-4, 1e-3, 1e-2], losses=[1.0, 0.5, 0.3], smoothed_losses=[1.0, 0.7, 0.5],
                        base_lr=2.5e-4, max_lr=1e-3, rule="valley", group_lrs=[1e-4, 1e-3],
                        metric_name="MulticlassAccuracy", metric_values=[0.2, 0.5, 0.6],
                        smoothed_metric=[0.2, 0.4, 0.5])
    fig = plot_range_test(r)
    assert "param group 1" in fig.axes[0].get_xlabel()
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "MulticlassAccuracy"
