"""Shared pieces of the benchmarks: machine description, in-memory datasets, a small CNN, and a
callback that measures training time and test accuracy without counting the evaluations.

Data (nothing is downloaded):
- Fashion-MNIST from the four IDX ``.gz`` files (``apt-get install dataset-fashion-mnist`` puts them
  under ``/usr/share/datasets/fashion-mnist/``), read with ``gzip`` + ``numpy``;
- scikit-learn's bundled 8x8 digits, for the seconds-long smoke run.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}


# ---------------------------------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    """CPU model, cores, threads used and library versions, for the results files."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import lightning

    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    try:
        import lightning_clr

        info["lightning_clr"] = lightning_clr.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        if rev.returncode == 0:
            info["git_commit"] = rev.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    info["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return info


# Raw results (every run, every evaluation, LR traces) live here, out of docs/: only tables and plots go there.
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DOCS_DIR = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON; gzip-compressed (reproducibly: no timestamp) when ``path`` ends in ``.gz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, sort_keys=False) + "\n"
    if path.suffix == ".gz":
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
            f.write(text.encode("utf-8"))
    else:
        path.write_text(text)


def read_json(path: Path) -> Any:
    """A JSON file written by :func:`write_json`, compressed (``.gz``) or not."""
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    return json.loads(path.read_text(encoding="utf-8"))


def results_dir(results: Optional[str], out_dir: Optional[str]) -> Path:
    """Where a benchmark writes its raw JSON: ``--results-dir``; else beside an explicit ``--out-dir`` (a
    smoke run into a temporary directory stays there); else ``benchmarks/results``."""
    if results is not None:
        return Path(results)
    return Path(out_dir) if out_dir is not None else RESULTS_DIR


# ---------------------------------------------------------------------------------------------- data
def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain): the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic {data[:4]!r})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(data_dir: str = FASHION_DIR) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_x, train_y, test_x, test_y)``; images as float32 (N, 1, 28, 28) in [0, 1]."""
    root = Path(data_dir)
    missing = [name for name in FASHION_FILES.values() if not (root / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"--data-dir {str(root)!r} lacks {', '.join(missing)}. On Debian/Ubuntu: "
            "`apt-get install dataset-fashion-mnist` (files under /usr/share/datasets/fashion-mnist/), or put the"
            " four IDX .gz files of https://github.com/zalandoresearch/fashion-mnist there."
        )
    arrays = {key: read_idx(root / name) for key, name in FASHION_FILES.items()}
    tx = torch.from_numpy(arrays["train_x"].astype(np.float32) / 255.0).unsqueeze(1)
    ex = torch.from_numpy(arrays["test_x"].astype(np.float32) / 255.0).unsqueeze(1)
    ty = torch.from_numpy(arrays["train_y"].astype(np.int64))
    return tx, ty, ex, torch.from_numpy(arrays["test_y"].astype(np.int64))


def load_digits_images(test_fraction: float = 0.25, seed: int = 0):
    """scikit-learn's digits as 8x8 images, split into train and test sets with a fixed seed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(x))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


class TensorBatches(Dataset):
    """Index with a list of indices, get a whole batch: no per-sample collation."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(idx)
        return self.x[index], self.y[index]


def train_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> DataLoader:
    dataset = TensorBatches(x, y)
    sampler = BatchSampler(RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)), batch_size, False)
    return DataLoader(dataset, sampler=sampler, batch_size=None)


class ArrayDataModule(pl.LightningDataModule):
    """In-memory train/validation tensors (for the cycle-length tuning, which validates on a held-out split)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, val_size: int, batch_size: int, seed: int) -> None:
        super().__init__()
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        val, train = perm[:val_size], perm[val_size:]
        self.train = (x[train], y[train])
        self.val = (x[val], y[val])
        self.batch_size, self.seed = batch_size, seed

    def train_dataloader(self) -> DataLoader:
        return train_loader(*self.train, self.batch_size, self.seed)

    def val_dataloader(self) -> DataLoader:
        ds = TensorBatches(*self.val)
        return DataLoader(ds, sampler=BatchSampler(range(len(ds)), 1000, False), batch_size=None)


# ---------------------------------------------------------------------------------------------- model
class SmallCNN(pl.LightningModule):
    """Two conv layers (8 and 16 channels) and a 64-unit head: ~0.9 Fashion-MNIST accuracy in minutes on a CPU.

    ``schedule`` picks what ``configure_optimizers`` returns besides the optimizer:
    ``None`` (constant LR), ``{"name": "onecycle", ...}`` or ``{"name": "cyclic", ...}`` (torch's
    schedulers, stepped per optimizer step with ``interval="step"``).
    """

    def __init__(self, image_size: int = 28, optimizer: str = "sgd", lr: float = 0.01, momentum: float = 0.9,
                 schedule: Optional[dict[str, Any]] = None, c1: int = 8, c2: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.lr = lr  # Lightning's Tuner.lr_find writes its suggestion here
        self.optimizer_name = optimizer
        self.momentum = momentum
        self.schedule = schedule
        side = image_size // 4
        self.net = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * side * side, hidden), nn.ReLU(), nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)  # a real model logs; the range test must survive it
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        if self.optimizer_name == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        else:
            opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)
        spec = self.schedule
        if not spec:
            return opt
        if spec["name"] == "onecycle":
            sched: Any = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=spec["total_steps"])
        elif spec["name"] == "cyclic":
            sched = torch.optim.lr_scheduler.CyclicLR(
                opt, base_lr=spec["base_lr"], max_lr=spec["max_lr"], step_size_up=spec["step_size_up"],
                mode=spec.get("mode", "triangular"),
            )
        else:
            raise ValueError(f"unknown schedule {spec!r}")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 2000) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for k in range(0, len(x), chunk):
        correct += int((model(x[k: k + chunk]).argmax(dim=1) == y[k: k + chunk]).sum())
    model.train(was_training)
    return correct / len(x)


class Tracker(Callback):
    """Times training (evaluations excluded), evaluates test accuracy every ``eval_every`` optimizer steps and
    at the end, and records the LR (and momentum) of every optimizer step.

    Put it FIRST in the callback list and a :class:`StartMarker` after the callbacks whose ``on_train_start``
    does work (the range test): the time between the two is ``setup_seconds``, and the training clock starts
    at the marker, so the range test's own steps are never counted as training steps.
    """

    def __init__(self, test_x: torch.Tensor, test_y: torch.Tensor, eval_every: int) -> None:
        self.test_x, self.test_y, self.eval_every = test_x, test_y, eval_every
        self.evals: list[dict[str, float]] = []
        self.lrs: list[float] = []
        self.momenta: list[Optional[float]] = []
        self.train_seconds = 0.0
        self.setup_seconds = 0.0
        self._t_start = 0.0
        self._t_last = 0.0
        self._armed = False
        self.diverged = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t_start = time.perf_counter()

    def arm(self) -> None:
        now = time.perf_counter()
        self.setup_seconds = now - self._t_start
        self._t_last = now
        self._armed = True

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if not self._armed:
            return
        group = optimizer.param_groups[0]
        self.lrs.append(float(group["lr"]))
        self.momenta.append(float(group["betas"][0]) if "betas" in group else group.get("momentum"))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._armed:
            return
        step = trainer.global_step
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(torch.as_tensor(loss)).all():
            self.diverged = True
            trainer.should_stop = True
        if step % self.eval_every == 0 and step > 0:
            self._evaluate(step, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._armed and (not self.evals or self.evals[-1]["step"] != trainer.global_step):
            self._evaluate(trainer.global_step, pl_module)

    def _evaluate(self, step: int, pl_module: pl.LightningModule) -> None:
        now = time.perf_counter()
        self.train_seconds += now - self._t_last
        acc = accuracy(pl_module, self.test_x, self.test_y)
        self.evals.append({"step": step, "seconds": round(self.train_seconds, 3), "acc": acc})
        self._t_last = time.perf_counter()


class StartMarker(Callback):
    """Arms the :class:`Tracker` once every earlier ``on_train_start`` (the range test) has finished."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.tracker.arm()


def make_trainer(callbacks: list[Callback], max_epochs: int, **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, callbacks=callbacks, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, deterministic=False, **kwargs,
    )


def quiet_lightning() -> None:
    """Silence the per-fit chatter (GPU availability, dataloader workers) that would drown the progress lines."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LightningModule.configure_optimizers.*")
    warnings.filterwarnings("ignore", message=".*number of training batches.*")


def progress(msg: str) -> None:
    print(msg, flush=True, file=sys.stdout)


def update_section(doc: Path, name: str, text: str) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``doc`` (append if absent)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    old = doc.read_text() if doc.exists() else ""
    if start in old and end in old:
        head, rest = old.split(start, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip() + ("\n\n" if old else "") + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(new)
