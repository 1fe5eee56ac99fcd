"""lightning_clr._outputs with real loggers: TensorBoard, CSV, MLflow (a sqlite store), W&B (offline), none;
atomic writes that never follow a symlink; a failed write warns instead of raising."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
from typing import Any

import lightning.pytorch as pl
import pytest
from helpers import TinyModel, loader
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from matplotlib.figure import Figure

from lightning_clr._outputs import _atomic_write, atomic_write_text, publish
from lightning_clr._validation import ArgumentError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JSON_TEXT = json.dumps({"base_lr": 0.001, "max_lr": 0.1})
needs_mlflow = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None,
    reason="mlflow-skinny is not installed (pip install 'lightning-clr[loggers]')",
)
needs_wandb = pytest.mark.skipif(
    importlib.util.find_spec("wandb") is None, reason="wandb is not installed (pip install 'lightning-clr[loggers]')"
)


def figure() -> Figure:
    fig = Figure(figsize=(3, 2))
    fig.add_subplot().plot([1e-4, 1e-3, 1e-2], [1.0, 0.5, 2.0])
    return fig


def fitted(tmp_path: Any, logger: Any) -> pl.Trainer:
    """A real Trainer that has run two optimizer steps of a tiny model with ``logger``."""
    tr = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=2, log_every_n_steps=1, logger=logger,
        default_root_dir=str(tmp_path / "root"), enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    tr.fit(TinyModel(), loader())
    return tr


@pytest.fixture
def in_empty_cwd(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs the test in an empty working directory, returned so that the test can check it stays empty."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return str(cwd)


def assert_files(directory: str, name: str = "lr_range_test") -> None:
    with open(os.path.join(directory, name + ".json"), encoding="utf-8") as f:
        assert json.load(f) == json.loads(JSON_TEXT)
    with open(os.path.join(directory, name + ".png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC


def test_tensorboard_gets_the_figure_and_the_files(tmp_path: Any, in_empty_cwd: str) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path / "tb"))
    tr = fitted(tmp_path, logger)
    written = publish(tr, "lr_range_test", json_text=JSON_TEXT, figure=figure())
    assert_files(logger.log_dir)
    assert sorted(written) == [os.path.join(logger.log_dir, "lr_range_test" + s) for s in (".json", ".png")]
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert "lr_range_test" in events.Tags()["images"]
    assert events.Images("lr_range_test")[0].step == tr.global_step == 2
    assert os.listdir(in_empty_cwd) == []


def test_csv_logger_gets_the_files_in_its_log_dir(tmp_path: Any, in_empty_cwd: str) -> None:
    logger = CSVLogger(str(tmp_path / "csv"), name="run")
    tr = fitted(tmp_path, logger)
    written = publish(tr, "lr_range_test", json_text=JSON_TEXT, figure=figure())
    assert_files(logger.log_dir)
    assert len(written) == 2 and all(p.startswith(logger.log_dir) for p in written)
    assert os.listdir(in_empty_cwd) == []


@needs_mlflow
def test_mlflow_gets_artifacts_of_the_run_and_nothing_in_the_cwd(tmp_path: Any, in_empty_cwd: str) -> None:
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MLFlowLogger(experiment_name="clr", tracking_uri=uri, artifact_location=str(tmp_path / "artifacts"))
    tr = fitted(tmp_path, logger)
    written = publish(tr, "lr_range_test", json_text=JSON_TEXT, figure=figure())
    run_id = logger.run_id
    assert written == [f"runs:/{run_id}/lr_range_test.json", f"runs:/{run_id}/lr_range_test.png"]

    client = MlflowClient(tracking_uri=uri)  # a fresh client, reading what the store holds
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["lr_range_test.json", "lr_range_test.png"]
    local = client.download_artifacts(run_id, "", str(tmp_path / "download"))
    assert_files(local)
    assert os.listdir(in_empty_cwd) == []
    assert not os.path.exists(tmp_path / "root")  # nor the trainer's default_root_dir: the run holds them


@needs_wandb
def test_wandb_offline_gets_an_image_and_the_json(tmp_path: Any, in_empty_cwd: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    logger = WandbLogger(project="clr", save_dir=str(tmp_path / "wandb"), offline=True)
    try:
        tr = fitted(tmp_path, logger)
        run = logger.experiment
        written = publish(tr, "lr_range_test", json_text=JSON_TEXT, figure=figure())
        run_dir = run.dir
    finally:
        wandb.finish()
    assert written == [f"wandb:{run.id}/lr_range_test", os.path.join(run_dir, "lr_range_test.json")]
    images = glob.glob(os.path.join(run_dir, "media", "images", "lr_range_test_*.png"))
    assert len(images) == 1
    with open(images[0], "rb") as f:
        assert f.read(8) == PNG_MAGIC
    with open(os.path.join(run_dir, "lr_range_test.json"), encoding="utf-8") as f:
        assert json.load(f) == json.loads(JSON_TEXT)
    run_root = os.path.dirname(run_dir)  # .../wandb/offline-run-<time>-<id>
    assert os.path.basename(run_root).startswith("offline-run-")
    assert glob.glob(os.path.join(run_root, "*.wandb"))  # the offline run's record, to be synced later
    assert os.listdir(in_empty_cwd) == []


def test_no_logger_writes_under_default_root_dir_not_the_cwd(tmp_path: Any, in_empty_cwd: str) -> None:
    tr = fitted(tmp_path, False)
    written = publish(tr, "lr_range_test", json_text=JSON_TEXT, figure=figure())
    assert_files(str(tmp_path / "root"))
    assert len(written) == 2
    assert os.listdir(in_empty_cwd) == []


class ListLogger(Logger):
    """A real Logger of a kind `publish` does not know: it keeps metrics in a list."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "list"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: Any = None) -> None:
        self.metrics.append(metrics)


def test_another_logger_falls_back_to_default_root_dir(tmp_path: Any, in_empty_cwd: str) -> None:
    logger = ListLogger()
    tr = fitted(tmp_path, logger)
    assert logger.metrics  # the logger was really used by the fit
    publish(tr, "lr_range_test", json_text=JSON_TEXT, figure=figure())
    assert_files(str(tmp_path / "root"))
    assert os.listdir(in_empty_cwd) == []


def test_a_symlink_at_the_target_is_replaced_and_its_target_left_alone(tmp_path: Any, in_empty_cwd: str) -> None:
    logger = CSVLogger(str(tmp_path / "csv"))
    tr = fitted(tmp_path, logger)
    os.makedirs(logger.log_dir, exist_ok=True)
    precious = tmp_path / "precious.txt"
    precious.write_text("do not overwrite")
    for suffix in (".json", ".png"):
        os.symlink(precious, os.path.join(logger.log_dir, "lr_range_test" + suffix))
    publish(tr, "lr_range_test", json_text=JSON_TEXT, figure=figure())
    assert precious.read_text() == "do not overwrite"
    for suffix in (".json", ".png"):
        assert not os.path.islink(os.path.join(logger.log_dir, "lr_range_test" + suffix))
    assert_files(logger.log_dir)


def test_an_unwritable_target_warns_and_does_not_raise(tmp_path: Any, in_empty_cwd: str) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    logger = CSVLogger(str(blocker / "below_a_file"))  # its log_dir cannot be created
    tr = fitted(tmp_path, False)
    tr.loggers = [logger]
    with pytest.warns(UserWarning, match="could not write 'lr_range_test' to CSVLogger"):
        assert publish(tr, "lr_range_test", json_text=JSON_TEXT, figure=figure()) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Any) -> None:
    path = str(tmp_path / "out.json")
    atomic_write_text(path, "old")

    def half_then_fail(f: Any) -> None:
        f.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _atomic_write(path, half_then_fail)
    assert open(path).read() == "old"
    assert os.listdir(tmp_path) == ["out.json"]


def test_written_files_have_the_umask_permissions(tmp_path: Any) -> None:
    old = os.umask(0o027)
    try:
        path = atomic_write_text(str(tmp_path / "a.json"), "{}")
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o640


@pytest.mark.parametrize("name", ["", "a/b", "..", 3])
def test_a_name_with_a_directory_is_refused(tmp_path: Any, name: Any) -> None:
    tr = pl.Trainer(logger=False, default_root_dir=str(tmp_path), enable_progress_bar=False)
    with pytest.raises(ArgumentError, match="`name` must be a file name"):
        publish(tr, name, json_text="{}")


# ------------------------------------------------------------------ the range test of a real fit, end to end
@needs_mlflow
def test_the_callbacks_range_test_lands_in_the_mlflow_run(tmp_path: Any, in_empty_cwd: str) -> None:
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    from lightning_clr import CyclicLearningRate, RangeTestConfig

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MLFlowLogger(experiment_name="clr", tracking_uri=uri, artifact_location=str(tmp_path / "artifacts"))
    clr = CyclicLearningRate(range_test=RangeTestConfig(num_steps=20, progress_bar=False))
    tr = pl.Trainer(accelerator="cpu", max_epochs=1, logger=logger, default_root_dir=str(tmp_path / "root"),
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    callbacks=[clr])
    tr.fit(TinyModel(), loader())
    client = MlflowClient(tracking_uri=uri)
    assert sorted(a.path for a in client.list_artifacts(logger.run_id)) == ["lr_range_test.json", "lr_range_test.png"]
    local = client.download_artifacts(logger.run_id, "lr_range_test.json", str(tmp_path / "download"))
    with open(local, encoding="utf-8") as f:
        assert json.load(f)["max_lr"] == clr.range_test_result.max_lr
    assert os.listdir(in_empty_cwd) == []


def test_the_callbacks_range_test_without_a_logger_goes_under_default_root_dir(tmp_path: Any,
                                                                             in_empty_cwd: str) -> None:
    from lightning_clr import CyclicLearningRate, RangeTestConfig

    clr = CyclicLearningRate(range_test=RangeTestConfig(num_steps=20, progress_bar=False))
    root = tmp_path / "root"
    tr = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, default_root_dir=str(root),
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    callbacks=[clr])
    tr.fit(TinyModel(), loader())
    assert sorted(os.listdir(root)) == ["lr_range_test.json", "lr_range_test.png"]
    assert os.listdir(in_empty_cwd) == []
