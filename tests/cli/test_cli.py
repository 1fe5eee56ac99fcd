"""The command line, run the way a user types it: real subprocesses with real argv.

Covers LightningCLI flags and YAML for the callback in a plain LightningCLI script (examples/cli.py), the
pitfall of LightningCLI's ``--lr_scheduler CyclicLR`` (per epoch) and the callback taking over, the
``lightning-clr`` command (fit, range_test, tune, --no_clr, --print_config, --help), readable errors for bad
flag values, and the console command after a non-editable ``pip install`` into a fresh virtual environment.
LR traces come from LearningRateMonitor through a CSVLogger's metrics.csv.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import yaml

from lightning_clr import cyclic_lr, cyclic_momentum
from lightning_clr.engine._settings import DEFAULT_FINAL_LR_RATIO

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "cli.py"
CLR_YAML = REPO / "examples" / "lightning_clr_config.yaml"
PLAIN_YAML = REPO / "examples" / "cli_config.yaml"
DIGITS = ["--model", "examples.digits.DigitsClassifier", "--data", "examples.digits.DigitsDataModule"]
STEPS_PER_EPOCH = 6
TIMEOUT = 180

_LAUNCH_ENV_PREFIXES = ("SLURM_", "TORCHELASTIC_", "PL_", "LSB_", "OMPI_", "PMI_")
_LAUNCH_ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")


def _env(pythonpath: bool = True) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(_LAUNCH_ENV_PREFIXES) and k not in _LAUNCH_ENV_KEYS
    }
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = str(REPO)  # so that `--model examples.digits...` imports from any directory
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    return env


def lightning_clr_cmd() -> list[str]:
    script = Path(sys.executable).parent / "lightning-clr"
    return [str(script)] if script.exists() else [sys.executable, "-m", "lightning_clr.cli"]


def run(args: list[str], cwd: Path, env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=cwd, env=env if env is not None else _env(), capture_output=True, text=True, timeout=TIMEOUT
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"
    )
    return proc


def tiny_fit_flags(log_dir: Path, epochs: int = 2) -> list[str]:
    """A tiny fit that logs the LR (and momentum) of every optimizer step to log_dir/trace/version_0/metrics.csv."""
    return [
        f"--trainer.max_epochs={epochs}",
        f"--trainer.limit_train_batches={STEPS_PER_EPOCH}",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.log_every_n_steps=1",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={log_dir}",
        "--trainer.logger.name=trace",
        "--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor",
        "--trainer.callbacks.logging_interval=step",
        "--trainer.callbacks.log_momentum=true",
    ]


def lr_trace(log_dir: Path) -> tuple[list[float], list[float]]:
    """(lr, momentum) of each optimizer step, in step order, from LearningRateMonitor's CSV rows."""
    rows = list(csv.DictReader((log_dir / "trace" / "version_0" / "metrics.csv").open()))
    rows = sorted((r for r in rows if r.get("lr-SGD")), key=lambda r: int(r["step"]))
    return [float(r["lr-SGD"]) for r in rows], [float(r["lr-SGD-momentum"]) for r in rows]


# ---------------------------------------------------------------------------------------------- the pitfall
CYCLIC_LR_FLAGS = [
    "--optimizer=SGD",
    "--optimizer.lr=0.01",
    "--lr_scheduler=CyclicLR",
    "--lr_scheduler.base_lr=0.01",
    "--lr_scheduler.max_lr=0.1",
    "--lr_scheduler.step_size_up=3",
]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_cli_cyclic_lr_alone_steps_once_per_epoch(tmp_path: Path) -> None:
    """Lightning #15340 is real: LightningCLI's --lr_scheduler CyclicLR moves the LR only at epoch ends, and
    it switches momentum on for SGD(momentum=0). Also: --no_clr leaves lightning-clr a plain LightningCLI."""
    args = ["fit", *DIGITS, *tiny_fit_flags(tmp_path), *CYCLIC_LR_FLAGS, "--no_clr"]
    proc = ok(run([*lightning_clr_cmd(), *args], tmp_path))
    assert "CyclicLearningRate" not in proc.stderr + proc.stdout
    lrs, momenta = lr_trace(tmp_path)
    assert len(lrs) == 2 * STEPS_PER_EPOCH
    first, second = lrs[:STEPS_PER_EPOCH], lrs[STEPS_PER_EPOCH:]
    assert first == pytest.approx([0.01] * STEPS_PER_EPOCH)  # one LR for the whole epoch
    assert second == pytest.approx([0.04] * STEPS_PER_EPOCH)  # one scheduler step per epoch: 0.01 + 0.09 / 3
    assert set(momenta) != {0.0}  # torch's CyclicLR turned momentum on


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_callback_from_flags_takes_over_cli_cyclic_lr(tmp_path: Path) -> None:
    """The callback added with --trainer.callbacks+= warns, removes the per-epoch CyclicLR, steps the LR every
    optimizer step (exactly the CLR formula), and undoes CyclicLR's momentum switch-on."""
    clr = [
        "--trainer.callbacks+=lightning_clr.CyclicLearningRate",
        "--trainer.callbacks.base_lr=0.01",
        "--trainer.callbacks.max_lr=0.1",
        "--trainer.callbacks.step_size_up=3",
        "--trainer.callbacks.mode=triangular2",
    ]
    proc = ok(run([sys.executable, str(SCRIPT), "fit", *tiny_fit_flags(tmp_path), *CYCLIC_LR_FLAGS, *clr], tmp_path))
    assert "CyclicLearningRate replaces the CyclicLR scheduler" in proc.stderr
    lrs, momenta = lr_trace(tmp_path)
    expected = [  # both bounds given: torch's schedule, no annealing tail
        cyclic_lr(t, base_lr=0.01, max_lr=0.1, step_size_up=3, mode="triangular2") for t in range(2 * STEPS_PER_EPOCH)
    ]
    assert lrs == pytest.approx(expected, rel=1e-6)
    assert all(a != b for a, b in zip(lrs, lrs[1:]))  # a new LR at every optimizer step
    assert set(momenta) == {0.0}


# ---------------------------------------------------------------------------------------------- lightning-clr
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_lightning_clr_fit_yaml_runs_range_test_and_cycles(tmp_path: Path) -> None:
    """The example YAML plus flag overrides: the default --clr callback runs the range test, saves its curve in
    the log dir, and cycles LR and momentum per step between the bounds it found."""
    args = [
        "fit", "--config", str(CLR_YAML), *tiny_fit_flags(tmp_path),
        "--clr.range_test.num_steps=20", "--clr.half_cycle_epochs=0.5", "--clr.mode=triangular",
        "--clr.cycle_momentum=true",
    ]  # fmt: skip
    proc = ok(run([*lightning_clr_cmd(), *args], tmp_path))
    assert "range test chose base_lr=" in proc.stderr + proc.stdout
    log_dir = tmp_path / "trace" / "version_0"
    found = json.loads((log_dir / "lr_range_test.json").read_text())
    assert len(found["lrs"]) <= 20 and 0 < found["base_lr"] < found["max_lr"]
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["clr"]["range_test"]["num_steps"] == 20 and saved["model"]["class_path"].endswith("DigitsClassifier")
    assert saved["clr"]["mode"] == "triangular" and saved["clr"]["base_momentum"] == 0.85  # flag, resolved default
    assert saved["clr"]["cycle_momentum"] is True
    assert saved["clr"]["range_test"]["rule"] == "smith" and saved["no_clr"] is False
    lrs, momenta = lr_trace(tmp_path)
    step = STEPS_PER_EPOCH // 2  # half_cycle_epochs=0.5
    bounds = dict(base_lr=found["base_lr"], max_lr=found["max_lr"], step_size_up=step, total_steps=len(lrs),
                  final_lr_ratio=DEFAULT_FINAL_LR_RATIO)
    assert saved["clr"]["final_lr_ratio"] is None  # automatic: the default tail, since the range test set the bounds
    assert lrs == pytest.approx([cyclic_lr(t, **bounds) for t in range(len(lrs))], rel=1e-6)
    expected_momenta = [cyclic_momentum(t, base_momentum=0.85, max_momentum=0.95, step_size_up=step) for t in range(12)]
    assert momenta == pytest.approx(expected_momenta, rel=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_lightning_clr_range_test_alias_prints_and_saves(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["range-test", *DIGITS, "--clr.range_test.num_steps=25", "--trainer.logger=false", f"--output_dir={out}"]
    proc = ok(run([*lightning_clr_cmd(), *args], tmp_path))
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("base_lr="))
    printed = dict(item.split("=") for item in line.split())
    saved = json.loads((out / "lr_range_test.json").read_text())
    assert float(printed["base_lr"]) == pytest.approx(saved["base_lr"], rel=1e-5)
    assert float(printed["max_lr"]) == pytest.approx(saved["max_lr"], rel=1e-5)
    assert 0 < saved["base_lr"] < saved["max_lr"] and len(saved["lrs"]) <= 25
    assert (out / "lr_range_test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "lightning_logs").exists()  # --trainer.logger=false: nothing else written


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_range_test_with_output_dir_writes_only_there(tmp_path: Path) -> None:
    """Default trainer flags (no --trainer.logger): only rt/ gets files, no lightning_logs/version_N/hparams.yaml,
    no config.yaml, nothing else in the working directory."""
    proc, steps = start_counted(["range_test", *COUNTING, "--clr.range_test.num_steps=20", "--output_dir=rt/"],
                                tmp_path)  # fmt: skip
    done = finish(proc)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "saved rt/lr_range_test.json" in done.stdout
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and p != steps)
    assert written == ["rt/lr_range_test.json", "rt/lr_range_test.png"], written


BANNER = ("GPU available", "TPU available", "💡 Tip", "Total params", "Seed set to")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tune_trials_are_quiet_unless_verbose(tmp_path: Path) -> None:
    """`lightning-clr tune` prints no Lightning banner, tips or model summary per trial (each trial builds a
    Trainer); --verbose=true shows them. The tuner's own lines (the trial table, the result) stay."""
    args = [
        "tune", *COUNTING, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false", "--clr.base_lr=0.01", "--clr.max_lr=0.1", "--n_trials=2",
        "--search.min_half_cycle_epochs=1", "--search.max_half_cycle_epochs=2", "--output.plot=false",
        "--output.progress_bar=false", "--output.logger=false",
    ]  # fmt: skip
    runs = {}
    for name, extra in (("quiet", []), ("verbose", ["--verbose=true", "--n_trials=1"])):
        (tmp_path / name).mkdir()
        runs[name] = start_counted([*args, *extra], tmp_path / name)
    quiet, verbose = finish(runs["quiet"][0]), finish(runs["verbose"][0])
    for proc in (quiet, verbose):
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "best half_cycle_epochs=" in proc.stdout
    text = quiet.stdout + quiet.stderr
    assert [b for b in BANNER if b in text] == [], text[-3000:]
    assert "trial    state" in text  # the tuner's table is not muted
    loud = verbose.stdout + verbose.stderr
    assert all(b in loud for b in ("GPU available", "Total params")), loud[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_lightning_clr_tune_with_journal_storage(tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna")
    journal = tmp_path / "tune.journal"
    args = [
        "tune", *DIGITS, "--trainer.max_epochs=2", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--clr.base_lr=0.01", "--clr.max_lr=0.1", "--clr.mode=triangular2",
        "--n_trials=2", "--search.min_half_cycle_epochs=1", "--search.max_half_cycle_epochs=2",
        "--study.storage", str(journal), "--study.study_name=cli", f"--output.output_dir={tmp_path / 'tuning'}",
        "--output.plot=false", "--output.progress_bar=false",
    ]  # fmt: skip
    proc = ok(run([*lightning_clr_cmd(), *args], tmp_path))
    assert "best half_cycle_epochs=" in proc.stdout and "--clr.mode triangular2" in proc.stdout
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="cli", storage=storage)
    assert len(study.trials) == 2
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert f"half_cycle_epochs={study.best_params['half_cycle_epochs']}" in proc.stdout


# ---------------------------------------------------------------------------------------------- bad values
COUNTING = ["--model", "cli_models.StepCountingModel", "--data", "examples.digits.DigitsDataModule"]


def start_counted(args: list[str], cwd: Path) -> tuple[subprocess.Popen, Path]:
    """``lightning-clr ARGS`` started in ``cwd``, its training steps recorded in a file (see cli_models.py)."""
    steps = cwd / "training_steps.txt"
    env = {**_env(), "LIGHTNING_CLR_TEST_STEPS": str(steps)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests")])
    proc = subprocess.Popen(
        [*lightning_clr_cmd(), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return proc, steps


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=TIMEOUT)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_one_line_error(proc: subprocess.CompletedProcess, steps: Path, flag: str, max_lines: int = 1) -> str:
    """Exit status 2; stderr is at most ``max_lines`` lines, the last one the error naming ``flag``; no
    traceback, no usage; no training step ran."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert 1 <= len(lines) <= max_lines, proc.stderr[-3000:]
    assert lines[-1].startswith(f"lightning-clr: error: {flag}: "), proc.stderr[-3000:]
    assert sum("error" in line for line in lines) == 1 and "Traceback" not in proc.stderr
    assert "usage:" not in proc.stderr
    assert not steps.exists(), "a training step ran before the error"
    return lines[-1]


def test_bad_values_exit_2_before_training_fast(tmp_path: Path) -> None:
    """The fast guard of the exit status (the slow tests below cover every kind of error): a value that
    jsonargparse refuses and one that the callback refuses, each a real `lightning-clr fit`, run side by side."""
    runs = {}
    for name, flag in (("parse", "--clr.mode=foo"), ("check", "--clr.max_lr=-1")):
        (tmp_path / name).mkdir()
        runs[name] = start_counted(["fit", *COUNTING, flag, "--trainer.max_epochs=1"], tmp_path / name)
    parse = assert_one_line_error(finish(runs["parse"][0]), runs["parse"][1], "--clr.mode")
    assert parse.endswith("expected one of 'triangular', 'triangular2', 'exp_range', got 'foo'")
    check = assert_one_line_error(finish(runs["check"][0]), runs["check"][1], "--clr.max_lr")
    assert "`max_lr` must be a finite number > 0, got -1.0" in check


BAD_VALUES = [
    # (argv after `lightning-clr fit --model ... --data ...`, the full flag, a text the error must contain)
    (["--clr.max_lr=abc"], "--clr.max_lr", "expected float, list[float] or null, got 'abc'"),
    (["--clr.step_size_up=2.5"], "--clr.step_size_up", "expected int or null, got '2.5'"),
    (["--clr.range_test.rule=bogus"], "--clr.range_test.rule", "expected one of 'smith', 'valley'"),
    (["--clr.range_test.num_steps=5"], "--clr.range_test.num_steps", "num_steps` must be a whole number"),
    (["--clr.scale_fn=nosuch.mod:fn"], "--clr.scale_fn", "No module named 'nosuch'"),
    (["--clr.mode=exp_range", "--clr.gamma=0"], "--clr.gamma", "(0, 1], got 0.0"),
    (["--model=nosuch.Model"], "--model", "cannot use 'nosuch.Model': No module named 'nosuch'"),
    (
        ["--trainer.callbacks+=lightning_clr.CyclicLearningRate", "--trainer.callbacks.mode=foo"],
        "--trainer.callbacks.mode",
        "got 'foo'",
    ),
    (
        ["--trainer.callbacks+=lightning_clr.CyclicLearningRate", "--trainer.callbacks.max_lr=-1"],
        "--trainer.callbacks.max_lr",
        "`max_lr` must be a finite number > 0, got -1.0",
    ),
]


OLD_JSONARGPARSE = tuple(int(x) for x in importlib.metadata.version("jsonargparse").split(".")[:2]) < (4, 30)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("argv", "flag", "message"), BAD_VALUES, ids=[" ".join(b[0]) for b in BAD_VALUES])
def test_bad_flag_value_is_one_line_naming_the_flag(tmp_path: Path, argv: list[str], flag: str, message: str) -> None:
    """lightning-clr: exit status 2 and one stderr line naming the full flag, no traceback or usage, nothing run."""
    proc, steps = start_counted(["fit", *COUNTING, *argv, "--trainer.max_epochs=1"], tmp_path)
    line = assert_one_line_error(finish(proc), steps, flag)
    # jsonargparse 4.27 (the declared floor) words a failed Union without the subtypes' own messages
    generic = OLD_JSONARGPARSE and message.startswith("expected ") and "Union subtypes" in line
    assert message in line or generic, line
    assert not (tmp_path / "lightning_logs").exists()  # failed before the Trainer did anything


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_list_length_only_the_optimizer_can_check_is_one_line(tmp_path: Path) -> None:
    """Two max_lr values for a one-group model: found at fit start (ArgumentError from the callback), still
    one error line naming --clr.max_lr, exit 2, no traceback, no training step. Lightning's banner, printed
    when the Trainer is built, comes before it."""
    args = ["fit", *COUNTING, "--clr.max_lr=[0.1,0.2]", "--trainer.max_epochs=1", "--trainer.logger=false",
            "--seed_everything=0"]  # fmt: skip
    proc, steps = start_counted(args, tmp_path)
    done = finish(proc)
    line = assert_one_line_error(done, steps, "--clr.max_lr", max_lines=8)
    assert "`max_lr` must be one value or one per param group" in line and "[0.1, 0.2]" in line
    banner = done.stderr.strip().splitlines()[:-1]
    assert all(not ln.startswith(" ") for ln in banner), done.stderr  # no indented traceback or dump lines


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_tune_argument_errors_name_the_flag(tmp_path: Path) -> None:
    """tune: a type error (jsonargparse) and a value error (tune_cycle_length's check) are one line naming the
    tune flag; nothing trains, no study output is written."""
    cases = {"type": ("--n_trials=abc", "--n_trials", "expected int, got 'abc'"),
             "value": ("--n_trials=0", "--n_trials", "`n_trials` must be a whole number >= 1, got 0")}  # fmt: skip
    runs = {}
    for name, (flag, _, _) in cases.items():
        (tmp_path / name).mkdir()
        runs[name] = start_counted(["tune", *COUNTING, flag, "--trainer.max_epochs=1"], tmp_path / name)
    for name, (_, flag, message) in cases.items():
        proc, steps = runs[name]
        line = assert_one_line_error(finish(proc), steps, flag, max_lines=2)  # 2: Lightning's "No seed found"
        assert message in line, line
        assert not (tmp_path / name / "clr_tuning").exists()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_tune_with_exp_range_names_the_clr_mode_flag(tmp_path: Path) -> None:
    proc = run([*lightning_clr_cmd(), "tune", *DIGITS, "--clr.mode=exp_range", "--n_trials=1"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: --clr.mode: tune searches 'triangular' and 'triangular2', got 'exp_range'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "clr_tuning").exists()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_tune_without_optuna_names_the_extra(tmp_path: Path) -> None:
    block = "import sys; sys.modules['optuna'] = None; from lightning_clr.cli import main; main()"
    proc = run([sys.executable, "-c", block, "tune", *DIGITS, "--n_trials=1"], tmp_path)
    assert proc.returncode == 2
    assert "lightning-clr: error: tune needs optuna" in proc.stderr and "pip install lightning-clr[tune]" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "clr_tuning").exists()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_plain_lightning_cli_surfaces_the_callback_value_error(tmp_path: Path) -> None:
    """In a plain LightningCLI script the callback's own check (max_lr=-1) still stops the run before any
    step, with the message naming the argument (after LightningCLI's traceback)."""
    argv = ["--trainer.callbacks+=lightning_clr.CyclicLearningRate", "--trainer.callbacks.max_lr=-1"]
    proc = run([sys.executable, str(SCRIPT), "fit", *argv], tmp_path)
    assert proc.returncode != 0
    assert "`max_lr` must be a finite number > 0, got -1.0" in proc.stderr
    assert not (tmp_path / "lightning_logs").exists()


# ---------------------------------------------------------------------------------------------- config, help
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_print_config_shows_the_callback_with_resolved_defaults(tmp_path: Path) -> None:
    """The example YAML and a second callback from flags, with a nested range_test flag, in --print_config."""
    args = ["fit", "--config", str(PLAIN_YAML), "--trainer.callbacks+=lightning_clr.CyclicLearningRate",
            "--trainer.callbacks.range_test.num_steps=50", "--trainer.callbacks.step_size_up=500", "--print_config"]
    config = yaml.safe_load(ok(run([sys.executable, str(SCRIPT), *args], tmp_path)).stdout)
    from_yaml, lr_monitor, from_flags = config["trainer"]["callbacks"]
    assert from_yaml["class_path"] == from_flags["class_path"] == "lightning_clr.CyclicLearningRate"
    assert lr_monitor["init_args"]["logging_interval"] == "step"
    assert from_yaml["init_args"]["mode"] == "triangular2" and from_yaml["init_args"]["range_test"]["num_steps"] == 100
    assert from_flags["init_args"]["step_size_up"] == 500 and from_flags["init_args"]["range_test"]["num_steps"] == 50
    for callback in (from_yaml, from_flags):  # every argument shown, with its resolved default
        init = callback["init_args"]
        assert init["base_lr"] is None and init["base_momentum"] == 0.85 and init["half_cycle_epochs"] == 2.0
        assert init["range_test"]["min_lr"] == 1e-7 and init["range_test"]["rule"] == "smith"
    assert from_flags["init_args"]["mode"] == "triangular"


# ---------------------------------------------------------------------------------------------- installed
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_console_command_after_pip_install(tmp_path: Path) -> None:
    """``pip install .`` (not editable) into a fresh venv; dependencies come from the dev venv through a .pth
    file. The wheel holds lightning_clr only, and ``lightning-clr`` runs from a directory outside the repo."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "lightning_clr", src / "lightning_clr", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "examples", src / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "tests", src / "tests", ignore=shutil.ignore_patterns("__pycache__", ".*"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        text=True).strip())  # fmt: skip
    dev_site = Path(next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()))
    (site / "_dev_deps.pth").write_text(str(dev_site) + "\n")
    env = _env(pythonpath=False)
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-build-isolation",
               "--no-index", "--quiet", str(src)]  # fmt: skip
    ok(run(install, tmp_path, env=env))
    installed = {p.name for p in site.iterdir()}
    assert "lightning_clr" in installed
    assert not {"examples", "tests"} & installed

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(REPO / "examples" / "digits.py", work / "my_digits.py")
    exe = str(venv / "bin" / "lightning-clr")
    find = "import importlib.util; print(importlib.util.find_spec('lightning_clr').origin)"
    origin = ok(run([str(python), "-c", find], work, env=env)).stdout.strip()
    assert origin == str(site / "lightning_clr" / "__init__.py")  # the installed copy, not the repo
    help_text = ok(run([exe, "--help"], work, env=env)).stdout
    for name in ("fit", "validate", "test", "predict", "range_test", "alias range-test", "tune"):
        assert name in help_text, name
    help_text = ok(run([exe, "tune", "--help"], work, env=env)).stdout
    for flag in ("--n_trials", "--study.storage", "--study.study_name", "--search.min_half_cycle_epochs",
                 "--search.max_half_cycle_epochs",
                 "--clr.range_test", "--model", "--data", "--trainer.max_epochs", "Tune the cycle length"):  # fmt: skip
        assert flag in help_text, flag
    args = ["fit", "--model=my_digits.DigitsClassifier", "--data=my_digits.DigitsDataModule",
            "--clr.base_lr=0.01", "--clr.max_lr=0.1", "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false"]  # fmt: skip
    proc = ok(run([exe, *args], work, env=env))
    assert "CyclicLearningRate: base_lr=" in proc.stderr and "step_size_up=" in proc.stderr
    assert list((work / "lightning_logs").glob("version_0/checkpoints/*.ckpt"))


# ---------------------------------------------------------------------------------------------- in process
@pytest.fixture()
def repo_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))  # `--model examples.digits...`
    monkeypatch.setattr(sys, "argv", ["lightning-clr"])  # pytest's own argv is not the CLI's


def _clr_callbacks(trainer: object) -> list:
    from lightning_clr import CyclicLearningRate

    return [cb for cb in trainer.callbacks if isinstance(cb, CyclicLearningRate)]  # type: ignore[attr-defined]


def test_default_clr_joins_fit_once(tmp_path: Path, repo_on_path: None) -> None:
    """LightningCLRCLI from Python: --clr.* configures the default callback, a CyclicLearningRate in
    --trainer.callbacks replaces it (never two: they would share a state_key), --no_clr removes it."""
    from lightning_clr.cli import LightningCLRCLI

    common = [*DIGITS, f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"]
    cli = LightningCLRCLI(args=[*common, "--clr.mode=triangular2", "--clr.range_test.num_steps=30"], run=False)
    [clr] = _clr_callbacks(cli.trainer)
    assert clr.mode == "triangular2" and clr.range_test.num_steps == 30
    user = ["--trainer.callbacks+=lightning_clr.CyclicLearningRate", "--trainer.callbacks.mode=exp_range"]
    [clr] = _clr_callbacks(LightningCLRCLI(args=[*common, *user, "--clr.mode=triangular2"], run=False).trainer)
    assert clr.mode == "exp_range"
    assert _clr_callbacks(LightningCLRCLI(args=[*common, "--no_clr"], run=False).trainer) == []


def test_default_clr_stays_out_of_validate(tmp_path: Path, repo_on_path: None) -> None:
    from lightning_clr.cli import LightningCLRCLI

    args = ["validate", *DIGITS, f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
            "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false"]  # fmt: skip
    cli = LightningCLRCLI(args=args)
    assert _clr_callbacks(cli.trainer) == []
    assert "val_acc" in cli.trainer.callback_metrics


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["range-test", "--model=x"], ["range_test", "--model=x"]),
        (["--config", "c.yaml", "range-test"], ["--config", "c.yaml", "range_test"]),
        (["-c=c.yaml", "range-test"], ["-c=c.yaml", "range_test"]),
        (["fit", "--trainer.default_root_dir", "range-test"], ["fit", "--trainer.default_root_dir", "range-test"]),
    ],
)
def test_range_test_alias(argv: list[str], expected: list[str]) -> None:
    from lightning_clr.cli._app import _normalize_alias

    assert _normalize_alias(list(argv)) == expected


def test_tune_help_lists_the_tuners_arguments_in_process(capsys: pytest.CaptureFixture, repo_on_path: None) -> None:
    """The fast guard of the tune subcommand's flags: jsonargparse reads them off ``Trainer.tune``, following its
    ``**kwargs`` into ``tune_cycle_length``; a body that stops forwarding them leaves only --model/--data."""
    from lightning_clr.cli import LightningCLRCLI

    with pytest.raises(SystemExit) as info:
        LightningCLRCLI(args=["tune", "--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--n_trials", "--search.min_half_cycle_epochs", "--study.storage", "--output.output_dir"):
        assert flag in help_text, flag


# ---------------------------------------------------------------------------------------------- issue 21: one line
def _alias_bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\nclr:\n  max_lr: *a{levels}\n"


ONE_LINE_CASES = {
    # name: (argv after `lightning-clr`, the flag the line starts with, a text the line must contain)
    "os_system": (["fit", *COUNTING, "--clr.scale_fn=os:system"], "--clr.scale_fn", "Python function"),
    "print": (["fit", *COUNTING, "--clr.scale_fn=builtins:print"], "--clr.scale_fn", "Python function"),
    "file_path": (["fit", *COUNTING, "--clr.scale_fn=../../etc/passwd"], "--clr.scale_fn", "'../../etc/passwd'"),
    "clr_list": (["fit", *COUNTING, "--config=list.yaml"], "--clr", "expected a mapping"),
    "bomb9": (["fit", *COUNTING, "--config=bomb9.yaml"], "YAML input refused", "aliases expand"),
    "bomb6": (["fit", *COUNTING, "--config=bomb6.yaml"], "YAML input refused", "aliases expand"),
    "huge_value": (["fit", *COUNTING, "--clr.mode=" + "x" * 100_000], "--clr.mode", "expected one of"),
    "range_test_dir": (["range_test", *COUNTING, "--output_dir=/dev/null/x"], "--output_dir", "Not a directory"),
    "tune_dir": (["tune", *COUNTING, "--output.output_dir=/dev/null/x", "--n_trials=1"], "--output.output_dir",
                 "Not a directory"),
}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("names", [list(ONE_LINE_CASES)[i : i + 3] for i in range(0, len(ONE_LINE_CASES), 3)],
                         ids=lambda names: "+".join(names))
def test_inputs_that_broke_the_one_line_promise(tmp_path: Path, names: list[str]) -> None:
    """Issue 21: each used to end in a traceback (42-50 lines), a TypeError naming no flag, no answer in 90 s
    (an alias bomb) or a multi-megabyte error line. Now: exit 2, one error line of at most ~600 characters
    naming the flag, no training step; three run side by side."""
    runs = {}
    for name in names:
        cwd = tmp_path / name
        cwd.mkdir()
        (cwd / "list.yaml").write_text("clr: [1, 2, 3]\n")
        (cwd / "bomb9.yaml").write_text(_alias_bomb(9))
        (cwd / "bomb6.yaml").write_text(_alias_bomb(6))
        runs[name] = start_counted([*ONE_LINE_CASES[name][0], "--trainer.max_epochs=1"], cwd)
    for name in names:
        _, flag, text = ONE_LINE_CASES[name]
        proc, steps = runs[name]
        done = finish(proc)
        errors = [ln for ln in done.stderr.splitlines() if ln.startswith("lightning-clr: error:")]
        assert done.returncode == 2 and len(errors) == 1, (name, done.returncode, done.stderr[-2000:])
        assert errors[0].startswith(f"lightning-clr: error: {flag}"), (name, errors[0][:300])
        assert text in errors[0] and len(errors[0]) <= 650, (name, errors[0][:300])
        assert "x" * 201 not in errors[0], (name, errors[0][:300])  # a value is echoed up to 200 characters
        assert "Traceback" not in done.stderr and len(done.stderr) < 2000, (name, done.stderr[-2000:])
        assert not steps.exists(), f"{name}: a training step ran before the error"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_range_test_prints_the_bounds_even_when_its_files_cannot_be_written(tmp_path: Path) -> None:
    """Issue 21: a write that fails after the sweep (here the JSON's name is taken by a directory) used to end
    in a 44-line traceback without the bounds. Now the bounds are printed, one warning names the path, exit 0."""
    (tmp_path / "rt" / "lr_range_test.json").mkdir(parents=True)
    proc, steps = start_counted(["range_test", *COUNTING, "--clr.range_test.num_steps=20", "--output_dir=rt"],
                                tmp_path)  # fmt: skip
    done = finish(proc)
    assert done.returncode == 0, done.stderr[-3000:]
    assert any(ln.startswith("base_lr=") and "max_lr=" in ln for ln in done.stdout.splitlines()), done.stdout
    assert "could not write the curve and plot under 'rt'" in done.stderr and "Traceback" not in done.stderr
    assert steps.exists()  # the sweep ran
