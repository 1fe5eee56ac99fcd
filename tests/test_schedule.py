"""The pure schedule math against torch's CyclicLR as the oracle."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_clr import cyclic_lr, cyclic_momentum
from lightning_clr import schedule as sched


def scale_by_cycle(x: float) -> float:
    return 1.0 / (1.0 + 0.5 * x)


def scale_by_step(x: float) -> float:
    return 0.999**x


def torch_trace(steps: int, **kwargs) -> tuple[list[float], list[float]]:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CyclicLR(opt, **kwargs)
    lrs, moms = [], []
    for _ in range(steps + 1):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        scheduler.step()
    return lrs, moms


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


@settings(max_examples=150, deadline=None)
@given(
    base_lr=st.floats(1e-6, 1.0),
    ratio=st.floats(1.0, 100.0),
    up=st.integers(1, 40),
    down=st.one_of(st.none(), st.integers(1, 40)),
    mode=st.sampled_from(["triangular", "triangular2", "exp_range"]),
    gamma=st.floats(0.9, 1.0),
    steps=st.integers(0, 200),
)
def test_matches_torch_cycliclr(base_lr, ratio, up, down, mode, gamma, steps):
    max_lr = base_lr * ratio
    kwargs = dict(base_lr=base_lr, max_lr=max_lr, step_size_up=up, step_size_down=down, mode=mode, gamma=gamma)
    lrs, moms = torch_trace(steps, base_momentum=0.8, max_momentum=0.9, **kwargs)
    for t in range(steps + 1):
        assert rel_err(cyclic_lr(t, **kwargs), lrs[t]) <= 1e-12, (t, kwargs)
        got = cyclic_momentum(t, base_momentum=0.8, max_momentum=0.9, step_size_up=up, step_size_down=down,
                              mode=mode, gamma=gamma)
        assert rel_err(got, moms[t]) <= 1e-12, (t, kwargs)


@settings(max_examples=40, deadline=None)
@given(
    up=st.integers(1, 30),
    down=st.integers(1, 30),
    fn_mode=st.sampled_from([(scale_by_cycle, "cycle"), (scale_by_step, "iterations")]),
    steps=st.integers(0, 150),
)
def test_custom_scale_fn_matches_torch(up, down, fn_mode, steps):
    fn, scale_mode = fn_mode
    kwargs = dict(base_lr=0.01, max_lr=0.1, step_size_up=up, step_size_down=down, scale_fn=fn, scale_mode=scale_mode)
    lrs, _ = torch_trace(steps, **kwargs)
    for t in range(steps + 1):
        assert rel_err(cyclic_lr(t, **kwargs), lrs[t]) <= 1e-12


def test_triangle_shape_and_cycle_ends():
    values = [cyclic_lr(t, base_lr=1.0, max_lr=5.0, step_size_up=4, step_size_down=2) for t in range(13)]
    for t, expected in ((0, 1.0), (4, 5.0), (6, 1.0), (10, 5.0), (12, 1.0)):
        assert values[t] == pytest.approx(expected, rel=1e-12)
    assert values[:5] == sorted(values[:5])
    assert values[4:7] == sorted(values[4:7], reverse=True)


def test_triangular2_halves_amplitude_each_cycle():
    peaks = [cyclic_lr(2 + 4 * c, base_lr=0.0 + 1e-9, max_lr=1.0, step_size_up=2, mode="triangular2") for c in range(4)]
    for a, b in zip(peaks, peaks[1:]):
        assert math.isclose(b - 1e-9, (a - 1e-9) / 2, rel_tol=1e-9)


def test_momentum_is_inverse_to_lr():
    for t in range(9):
        lr = cyclic_lr(t, base_lr=0.1, max_lr=0.5, step_size_up=4)
        mom = cyclic_momentum(t, base_momentum=0.85, max_momentum=0.95, step_size_up=4)
        frac = (lr - 0.1) / 0.4
        assert math.isclose(mom, 0.95 - 0.1 * frac, rel_tol=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(base_lr=0.0), r"`base_lr` must be a finite number > 0, got 0\.0"),
        (dict(base_lr=-1e-3), r"`base_lr`.*-0\.001"),
        (dict(max_lr=float("nan")), r"`max_lr`.*nan"),
        (dict(max_lr=float("inf")), r"`max_lr`.*inf"),
        (dict(base_lr=0.1, max_lr=0.01), r"`max_lr` must be >= `base_lr` \(0\.1\), got 0\.01"),
        (dict(step_size_up=0), r"`step_size_up` must be a whole number in \[1, .*got 0"),
        (dict(step_size_down=0.5), r"`step_size_down` must be a whole number.*got 0\.5"),
        (dict(mode="foo"), r"`mode` must be one of .*got 'foo'"),
        (dict(mode="exp_range", gamma=0.0), r"`gamma` must be a number in \(0, 1\].*got 0\.0"),
        (dict(mode="triangular", gamma=0.9), r"`gamma` must be 1\.0 unless mode='exp_range', got 0\.9"),
        (dict(mode="exp_range", gamma=1.5), r"`gamma`.*1\.5"),
        (dict(scale_mode="epoch"), r"`scale_mode`.*'epoch'"),
        (dict(base_momentum=0.95, max_momentum=0.85), r"`base_momentum` must be <= `max_momentum` \(0\.85\).*0\.95"),
        (dict(max_momentum=1.0), r"`max_momentum` must be a number in \[0, 1\), got 1\.0"),
        (dict(base_momentum=-0.1), r"`base_momentum`.*-0\.1"),
    ],
)
def test_validation_names_argument_and_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sched.validate_schedule_args(**kwargs)


def test_scale_fn_import_path_round_trip():
    path = sched.scale_fn_path(scale_by_cycle)
    assert path == f"{__name__}:scale_by_cycle"
    assert sched.import_scale_fn(path) is scale_by_cycle
    assert sched.scale_fn_path(lambda x: 1.0) is None
    with pytest.raises(ValueError, match="import path"):
        sched.import_scale_fn("nocolon")
    with pytest.raises(ValueError, match=r"`scale_fn` must be an import path.*'os:nosuchfunction'.*AttributeError"):
        sched.import_scale_fn("os:nosuchfunction")


def test_schedule_module_does_not_import_lightning_or_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import lightning_clr.schedule as m, lightning_clr._validation\n"
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, sorted(sys.modules)\n"
        "print(m.cyclic_lr(3, base_lr=0.1, max_lr=0.5, step_size_up=2))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) == pytest.approx(0.3)
    pickle.dumps(sched.cyclic_lr)


@settings(max_examples=200, deadline=None)
@given(half=st.floats(0.1, 10.0), per_epoch=st.integers(1, 500), total=st.integers(2, 20000))
def test_derived_cycles_fill_the_run_and_end_at_a_cycle_end(half, per_epoch, total):
    up, down = sched.derive_step_sizes(half, per_epoch, total_steps=total)
    cycles = total // (up + down)
    assert up >= 1 and down >= 1 and down - up in (0, 1) or up == 1
    assert cycles >= 1 or up + down > total  # only a run shorter than two steps per half cannot hold a cycle
    if cycles >= 1:
        assert total - cycles * (up + down) < max(cycles, 2)
    assert sched.derive_step_sizes(half, per_epoch) == (max(1, round(half * per_epoch)),) * 2
    assert sched.derive_step_sizes(half, per_epoch, total_steps=total, step_size_down=7)[1] == 7


def test_docstring_examples_run():
    import doctest

    from lightning_clr.range_test import _rules

    for module in (sched, _rules):
        failed, tried = doctest.testmod(module)
        assert tried > 0 and failed == 0, module.__name__


@settings(max_examples=60, deadline=None)
@given(up=st.integers(1, 20), down=st.integers(1, 20), cycles=st.integers(1, 4), ratio=st.floats(1e-4, 0.99))
def test_annealing_tail_changes_only_the_last_falling_half_and_ends_at_the_ratio(up, down, cycles, ratio):
    total = cycles * (up + down)
    kwargs = dict(base_lr=0.01, max_lr=0.1, step_size_up=up, step_size_down=down)
    for t in range(total + 1):
        plain = cyclic_lr(t, **kwargs)
        tail = cyclic_lr(t, total_steps=total, final_lr_ratio=ratio, **kwargs)
        if t <= total - down:
            assert tail == plain  # bitwise: no change before the tail
        else:
            assert tail < plain and tail >= 0.01 * ratio * (1 - 1e-12)
    assert cyclic_lr(total, total_steps=total, final_lr_ratio=ratio, **kwargs) == pytest.approx(0.01 * ratio)
    tail_lrs = [cyclic_lr(t, total_steps=total, final_lr_ratio=ratio, **kwargs) for t in range(total - down, total + 1)]
    assert tail_lrs == sorted(tail_lrs, reverse=True)
