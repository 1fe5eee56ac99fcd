"""The tasks of the benchmark panel (``benchmarks/panel.py``): data, network, loss and metric of each.

Nothing is downloaded:
- ``fashion``: Fashion-MNIST (``apt-get install dataset-fashion-mnist``), a seeded 6,000-image training subset,
  the first 5,000 test images, ``SmallCNN``, SGD momentum 0.9, batch 128, 6 epochs; metric test accuracy,
  evaluated once per epoch (sized for a 2-core machine shared with other jobs).
- ``digits``: the demo's task (examples/demo.py): scikit-learn's 8x8 digits, 80/20 split with seed 0, MLP 64-32-10,
  SGD momentum 0.9, batch 32, 16 epochs; metric validation accuracy.
- ``charlm``: a character-level causal transformer (2 pre-norm layers, d=64, 4 heads, context 64) with AdamW
  (weight decay 0.01) on 160,000 characters of Python standard-library source read from the running
  interpreter's own stdlib (``inspect.getsourcefile`` of :data:`CHARLM_TRAIN`; validation: 16,000 characters of
  :data:`CHARLM_VAL`), batch 32, 3 epochs; metric validation loss in nats per character (perplexity = exp).
- ``adam_mlp``: scikit-learn's seeded ``make_classification`` (6,000 rows, 20 features, 5 classes), 4,000 train /
  2,000 test, MLP 20-64-64-5, Adam, batch 64, 10 epochs; metric test accuracy.
- ``reg64`` / ``reg512``: the issue's small noisy regression: 8 features, a random teacher network plus noise, MLP
  8-32-1, SGD momentum 0.9, MSE, batch 8, the optimizer's LR set to 1e-4; 64 or 512 training rows, 2,000 test rows;
  metric test MSE.
- ``issue64`` / ``issue512``: the same regression with a linear teacher (target variance ~8, the scale of the
  issue's own figures), as tests/callback/test_noisy_regression.py trains it: 100 or 8 epochs, 1,024 test rows.
"""

from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from _common import SmallCNN, load_digits_images, load_fashion_mnist
from torch import nn

CHARLM_TRAIN = ["argparse", "dataclasses", "enum", "functools", "inspect", "pathlib", "typing"]
CHARLM_VAL = ["textwrap", "shutil"]
CHARLM_TRAIN_CHARS, CHARLM_VAL_CHARS, CONTEXT = 160_000, 16_000, 64


@dataclass
class Task:
    """One panel task. ``higher_better``: accuracy (True) or a loss (False); ``grid``: the oracle's constant LRs."""

    name: str
    optimizer: str
    epochs: int
    batch_size: int
    make_net: Callable[[], nn.Module]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metric: Callable[[nn.Module, torch.Tensor, torch.Tensor], float]
    metric_name: str
    higher_better: bool
    targets: list[float]
    grid: list[float]
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    model_lr: float
    default_lr: float
    description: str = ""
    evals_per_epoch: float = 2.0
    extra: dict[str, Any] = field(default_factory=dict)
    weight_decay: Optional[float] = None  # None: the optimizer's habit (SGD and Adam 0, AdamW 0.01)
    clip: Optional[float] = None  # Trainer(gradient_clip_val=...) for every recipe

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train[0]) / self.batch_size)

    @property
    def decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 0.01 if self.optimizer == "adamw" else 0.0


# ---------------------------------------------------------------------------------------------- metrics
@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 2000) -> float:
    correct = sum(int((net(x[k: k + chunk]).argmax(dim=1) == y[k: k + chunk]).sum()) for k in range(0, len(x), chunk))
    return correct / len(x)


@torch.no_grad()
def mse(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(nn.functional.mse_loss(net(x), y))


def lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def lm_metric(net: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 128) -> float:
    total = sum(float(lm_loss(net(x[k: k + chunk]), y[k: k + chunk])) * len(x[k: k + chunk])
                for k in range(0, len(x), chunk))
    return total / len(x)


# ---------------------------------------------------------------------------------------------- networks
class CharTransformer(nn.Module):
    """A small causal transformer over 128 ASCII codes (pre-norm, no dropout)."""

    def __init__(self, vocab: int = 128, context: int = CONTEXT, d: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(context, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        h = self.tok(x) + self.pos(torch.arange(n, device=x.device))
        h = self.blocks(h, mask=self.mask[:n, :n], is_causal=True)
        return self.head(self.norm(h))


class CharLSTM(nn.Module):
    """A one-layer character LSTM over 128 ASCII codes (embedding 32, hidden 128)."""

    def __init__(self, vocab: int = 128, d: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.tok, self.lstm, self.head = nn.Embedding(vocab, d), nn.LSTM(d, hidden, batch_first=True), nn.Linear(
            hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.tok(x))[0])


class Block(nn.Module):
    """A ResNet basic block: two 3x3 conv + BatchNorm, identity (or 1x1 conv + BN when it downsamples)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def small_resnet(width: int = 8) -> nn.Sequential:
    """Stem conv + BN, three basic blocks (widths w, 2w, 4w; the last two downsample), global pool, linear."""
    return nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         Block(width, width, 1), Block(width, 2 * width, 2), Block(2 * width, 4 * width, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 10))


def mlp(*widths: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


# ---------------------------------------------------------------------------------------------- data
def stdlib_text(modules: list[str], chars: int) -> tuple[str, list[str]]:
    """Concatenated source of stdlib modules, as read from this interpreter, cut to ``chars`` characters."""
    parts, files = [], []
    for name in modules:
        path = inspect.getsourcefile(importlib.import_module(name))
        files.append(str(path))
        parts.append(open(path, encoding="utf-8").read())  # noqa: SIM115
    return "".join(parts)[:chars], files


def char_windows(text: str, context: int = CONTEXT) -> tuple[torch.Tensor, torch.Tensor]:
    codes = torch.tensor([min(ord(c), 127) for c in text], dtype=torch.long)
    n = (len(codes) - 1) // context
    x = codes[: n * context].view(n, context)
    y = codes[1: n * context + 1].view(n, context)
    return x, y


def teacher_regression(rows: int, test_rows: int = 2000, seed: int = 0) -> tuple[tuple, tuple]:
    """8 features; y = a random 8-16-1 tanh teacher (output scaled to unit variance) + N(0, 0.1^2) noise."""
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(8, 16, generator=g), torch.randn(16, 1, generator=g)
    x = torch.randn(rows + test_rows, 8, generator=g)
    clean = torch.tanh(x @ w1 / math.sqrt(8)) @ w2
    clean = (clean - clean.mean()) / clean.std()
    y = clean + 0.1 * torch.randn(clean.shape, generator=g)
    return (x[:rows], y[:rows]), (x[rows:], y[rows:])


def _subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


# ---------------------------------------------------------------------------------------------- tasks
def build(name: str, quick: bool = False, data_dir: Optional[str] = None) -> Task:
    """The task ``name``; ``quick`` shrinks data and epochs to a seconds-long smoke run."""
    ce = nn.functional.cross_entropy
    if name == "fashion":
        tx, ty, ex, ey = load_fashion_mnist(data_dir) if data_dir else load_fashion_mnist()
        n_train, n_test = (2000, 1000) if quick else (6_000, 5_000)
        return Task(name, "sgd", 1 if quick else 6, 128, lambda: SmallCNN().net, ce, accuracy, "test acc", True,
                    [0.78, 0.80, 0.82] if not quick else [0.5, 0.6], [0.01, 0.2] if quick else
                    [0.01, 0.02, 0.05, 0.1, 0.2], _subset(tx, ty, n_train), (ex[:n_test], ey[:n_test]), 0.01, 0.01,
                    f"Fashion-MNIST, {n_train:,}-image seeded training subset, {n_test:,} test images, SmallCNN",
                    evals_per_epoch=1.0)
    if name == "digits":
        x_tr, y_tr, x_te, y_te = load_digits_images(test_fraction=0.2)
        x_tr, x_te = x_tr.flatten(1), x_te.flatten(1)
        return Task(name, "sgd", 2 if quick else 16, 32, lambda: mlp(64, 32, 10), ce, accuracy, "val acc", True,
                    [0.9, 0.95], [0.01, 0.1] if quick else [0.01, 0.03, 0.1, 0.3], (x_tr, y_tr), (x_te, y_te),
                    0.01, 0.01, "scikit-learn digits, 1,438 train / 359 validation, MLP 64-32-10 (the demo's)")
    if name == "charlm":
        train_text, train_files = stdlib_text(CHARLM_TRAIN, 20_000 if quick else CHARLM_TRAIN_CHARS)
        val_text, val_files = stdlib_text(CHARLM_VAL, 4_000 if quick else CHARLM_VAL_CHARS)
        return Task(name, "adamw", 1 if quick else 3, 32, lambda: CharTransformer(), lm_loss, lm_metric,
                    "val loss (nats/char)", False, [2.5, 2.2], [1e-3, 1e-2] if quick else
                    [1e-3, 3e-3, 1e-2, 3e-2], char_windows(train_text), char_windows(val_text), 1e-3, 1e-3,
                    f"char-level LM on {len(train_text):,} chars of stdlib source ({', '.join(CHARLM_TRAIN)}), "
                    f"validated on {len(val_text):,} chars of ({', '.join(CHARLM_VAL)})",
                    extra={"train_files": train_files, "val_files": val_files})
    if name == "adam_mlp":
        from sklearn.datasets import make_classification

        rows = 1500 if quick else 6000
        x, y = make_classification(n_samples=rows, n_features=20, n_informative=12, n_redundant=4, n_classes=5,
                                   n_clusters_per_class=2, flip_y=0.03, random_state=0)
        xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
        n = rows * 2 // 3
        mean, std = xt[:n].mean(0), xt[:n].std(0)
        xt = (xt - mean) / std
        return Task(name, "adam", 2 if quick else 10, 64, lambda: mlp(20, 64, 64, 5), ce, accuracy, "test acc", True,
                    [0.8, 0.85], [1e-3, 1e-2] if quick else [3e-4, 1e-3, 3e-3, 1e-2], (xt[:n], yt[:n]),
                    (xt[n:], yt[n:]), 1e-3, 1e-3, f"make_classification (seed 0), {n:,} train / {rows - n:,} test, "
                    "MLP 20-64-64-5")
    if name in ("reg64", "reg512"):
        rows = int(name[3:])
        train, test = teacher_regression(rows)
        epochs = (4 if quick else 64) if rows == 64 else (2 if quick else 16)
        return Task(name, "sgd", epochs, 8, lambda: mlp(8, 32, 1), nn.functional.mse_loss, mse, "test MSE", False,
                    [0.5, 0.2], [1e-3, 1e-2] if quick else [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1], train, test, 1e-4,
                    0.01,
                    f"noisy regression, {rows} train / 2,000 test rows, MLP 8-32-1, optimizer LR 1e-4",
                    evals_per_epoch=0.25 if rows == 64 else 1.0)
    if name in ("issue64", "issue512"):
        rows = int(name[5:])
        train, test = linear_regression(rows, 1), linear_regression(1024, 2)
        epochs = (4 if quick else 100) if rows == 64 else (2 if quick else 8)
        return Task(name, "sgd", epochs, 8, lambda: mlp(8, 32, 1), nn.functional.mse_loss, mse, "test MSE", False,
                    [1.0, 0.1], [1e-3, 1e-2] if quick else [1e-3, 3e-3, 1e-2, 2e-2, 5e-2], train, test, 1e-4, 0.01,
                    f"issue 12's regression as tests/callback/test_noisy_regression.py has it: "
                    f"a linear teacher (variance ~8) "
                    f"+ N(0, 0.1^2), {rows} train / 1,024 test rows, MLP 8-32-1, optimizer LR 1e-4",
                    evals_per_epoch=0.25 if rows == 64 else 1.0)
    return build_new(name, quick, data_dir)


def build_new(name: str, quick: bool, data_dir: Optional[str]) -> Task:
    """The tasks added with the LR-free peers: small batches, BatchNorm with weight decay, a recurrent model."""
    if name == "digits_b8":  # small-batch classification: where the reading landed on the cliff
        task = build("digits", quick, data_dir)
        task.name, task.batch_size, task.epochs = name, 8, 1 if quick else 4
        task.description += ", batches of 8 rows"
        task.grid = [0.01, 0.1] if quick else [0.003, 0.01, 0.03, 0.1]
        return task
    if name == "resnet":
        tx, ty, ex, ey = load_fashion_mnist(data_dir) if data_dir else load_fashion_mnist()
        n_train, n_test = (1000, 500) if quick else (4_000, 2_000)
        tx, ex = nn.functional.avg_pool2d(tx, 2), nn.functional.avg_pool2d(ex, 2)  # 14x14: CPU-sized
        return Task(name, "sgd", 1 if quick else 5, 64, small_resnet, nn.functional.cross_entropy, accuracy,
                    "test acc", True, [0.5, 0.6] if quick else [0.78, 0.82], [0.01, 0.1] if quick else
                    [0.01, 0.03, 0.1, 0.3], _subset(tx, ty, n_train), (ex[:n_test], ey[:n_test]), 0.01, 0.01,
                    f"Fashion-MNIST at 14x14, {n_train:,}-image seeded training subset, {n_test:,} test images, "
                    "ResNet (3 basic blocks, widths 8-16-32, BatchNorm), weight decay 5e-4",
                    evals_per_epoch=1.0, weight_decay=5e-4)
    if name == "charlstm":
        train_text, train_files = stdlib_text(CHARLM_TRAIN, 16_000 if quick else 96_000)
        val_text, val_files = stdlib_text(CHARLM_VAL, 4_000 if quick else CHARLM_VAL_CHARS)
        return Task(name, "adam", 1 if quick else 3, 32, lambda: CharLSTM(), lm_loss, lm_metric,
                    "val loss (nats/char)", False, [3.0, 2.6] if quick else [2.7, 2.5],
                    [1e-3, 1e-2] if quick else [1e-3, 3e-3, 1e-2, 3e-2], char_windows(train_text),
                    char_windows(val_text), 1e-3, 1e-3,
                    f"char-level LSTM (embedding 32, hidden 128) on {len(train_text):,} chars of stdlib source, "
                    f"validated on {len(val_text):,} chars; gradient norm clipped at 1",
                    extra={"train_files": train_files, "val_files": val_files}, clip=1.0)
    raise ValueError(f"unknown task {name!r}")


def linear_regression(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` rows of one fixed linear task (weights from seed 0, 8 features) with label noise 0.1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=torch.Generator().manual_seed(0)) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


TASKS = ["fashion", "digits", "charlm", "adam_mlp", "reg64", "reg512", "issue64", "issue512", "digits_b8", "resnet",
         "charlstm"]
EXTRA_TASKS: list[str] = []
