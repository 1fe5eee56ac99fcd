"""Outputs (a JSON text and a matplotlib figure) into the logger the user chose, written atomically.

Where :func:`publish` puts them, for each of ``trainer.loggers``:

- ``TensorBoardLogger``: the figure with ``add_figure``, and ``<name>.json`` / ``<name>.png`` in its ``log_dir``;
- ``CSVLogger``: the two files in its ``log_dir``;
- ``MLFlowLogger``: the two files as artifacts of the logger's run (nothing is left in the working directory);
- ``WandbLogger``: the figure as a ``wandb.Image`` under ``name``, the JSON as a file of the run (``run.save``);
- no logger, or only loggers of other kinds: the two files under ``trainer.default_root_dir``.

Files are written to a temporary file in the target's directory, flushed to disk, then renamed onto the final
name (``os.replace``): a reader never sees half a file, and a symlink at the final name is replaced by the new
file while the file it pointed to is left as it was. Only global rank 0 writes; it runs no collective, so it
may be called on every rank or on rank 0 alone. A failure warns (``rank_zero_warn``) and never raises: the
other ranks may be waiting in a collective.

The loggers are recognised by class name along the MRO, so that those of ``lightning.pytorch.loggers`` and of
the standalone ``pytorch_lightning.loggers`` (and subclasses of either) are handled alike.

Example:
    >>> from matplotlib.figure import Figure
    >>> figure = Figure()
    >>> _ = figure.add_subplot().plot([1, 2, 3])
    >>> # publish(trainer, "lr_range_test", json_text=result.to_json(), figure=figure)
"""

from __future__ import annotations

import os
import tempfile
from typing import IO, TYPE_CHECKING, Any, Callable, Optional

from lightning_utilities.core.rank_zero import rank_zero_warn

from lightning_clr._validation import ArgumentError

if TYPE_CHECKING:  # matplotlib is optional (lightning-clr[plot])
    from matplotlib.figure import Figure

__all__ = ["atomic_write_bytes", "atomic_write_figure", "atomic_write_text", "publish", "writable_dir"]

FIGURE_DPI = 100


def _file_mode() -> int:
    """The permissions a plain ``open(path, "w")`` would give: ``0o666`` less the process umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> str:
    """Write through ``write`` into a temporary file beside ``path``, fsync it, then rename it onto ``path``."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())  # mkstemp creates it 0600
        os.replace(tmp, path)  # renames onto the name: a symlink there is replaced, never followed
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable; not every filesystem lets a directory be opened
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def atomic_write_bytes(path: str, data: bytes) -> str:
    """Replace ``path`` with ``data`` atomically, never following a symlink there. Returns the absolute path.

    Example:
        >>> import os, tempfile
        >>> p = atomic_write_bytes(os.path.join(tempfile.mkdtemp(), "a.bin"), b"xyz")
        >>> open(p, "rb").read()
        b'xyz'
    """
    return _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str, text: str) -> str:
    """Replace ``path`` with ``text`` (UTF-8) atomically, never following a symlink there.

    Example:
        >>> import os, tempfile
        >>> p = atomic_write_text(os.path.join(tempfile.mkdtemp(), "a.json"), '{"a": 1}')
        >>> open(p).read()
        '{"a": 1}'
    """
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_figure(path: str, figure: Figure, dpi: int = FIGURE_DPI) -> str:
    """Save a matplotlib ``figure`` as PNG onto ``path`` atomically, never following a symlink there.

    Example:
        >>> import os, tempfile
        >>> from matplotlib.figure import Figure
        >>> p = atomic_write_figure(os.path.join(tempfile.mkdtemp(), "a.png"), Figure())
        >>> open(p, "rb").read(4)
        b'\\x89PNG'
    """
    return _atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=dpi))


def writable_dir(name: str, path: Any) -> str:
    """Create ``path`` if needed and check that a file can be written in it, before any work whose outputs go
    there: an :class:`ArgumentError` naming ``name``, ``path`` and the OS's reason otherwise. Outputs written at
    the end are still best-effort (a disk can fill up meanwhile).

    Example:
        >>> import os, tempfile
        >>> os.path.isdir(writable_dir("output_dir", os.path.join(tempfile.mkdtemp(), "new")))
        True
    """
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except (OSError, TypeError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ArgumentError(name, path, "a directory that can be created and written to", reason) from None
    return str(path)


def _kind(logger: Any) -> Optional[str]:
    """``"tensorboard"``, ``"csv"``, ``"mlflow"``, ``"wandb"`` or ``None``, from the class names along the MRO."""
    names = {cls.__name__ for cls in type(logger).__mro__}
    for class_name, kind in (("TensorBoardLogger", "tensorboard"), ("CSVLogger", "csv"),
                             ("MLFlowLogger", "mlflow"), ("WandbLogger", "wandb")):
        if class_name in names:
            return kind
    return None


def _write_files(directory: str, name: str, json_text: Optional[str], figure: Optional[Figure]) -> list[str]:
    paths = []
    if json_text is not None:
        paths.append(atomic_write_text(os.path.join(directory, name + ".json"), json_text))
    if figure is not None:
        paths.append(atomic_write_figure(os.path.join(directory, name + ".png"), figure))
    return paths


def _to_tensorboard(trainer: Any, logger: Any, name: str, json_text: Optional[str], figure: Any) -> list[str]:
    if figure is not None:
        logger.experiment.add_figure(name, figure, global_step=trainer.global_step, close=False)
    return _write_files(logger.log_dir, name, json_text, figure)


def _to_csv(trainer: Any, logger: Any, name: str, json_text: Optional[str], figure: Any) -> list[str]:
    return _write_files(logger.log_dir, name, json_text, figure)


def _to_mlflow(trainer: Any, logger: Any, name: str, json_text: Optional[str], figure: Any) -> list[str]:
    client, run_id = logger.experiment, logger.run_id
    with tempfile.TemporaryDirectory(prefix="lightning_clr-") as staging:
        paths = _write_files(staging, name, json_text, figure)
        for path in paths:
            client.log_artifact(run_id, path)
    return [f"runs:/{run_id}/{os.path.basename(path)}" for path in paths]


def _to_wandb(trainer: Any, logger: Any, name: str, json_text: Optional[str], figure: Any) -> list[str]:
    import wandb

    run = logger.experiment
    written = []
    if figure is not None:
        run.log({name: wandb.Image(figure), "trainer/global_step": trainer.global_step})
        written.append(f"wandb:{run.id}/{name}")
    if json_text is not None:
        path = atomic_write_text(os.path.join(run.dir, name + ".json"), json_text)
        run.save(path, base_path=run.dir, policy="now")
        written.append(path)
    return written


_PUBLISHERS = {"tensorboard": _to_tensorboard, "csv": _to_csv, "mlflow": _to_mlflow, "wandb": _to_wandb}


def publish(trainer: Any, name: str, *, json_text: Optional[str] = None, figure: Optional[Figure] = None) -> list[str]:
    """Put ``<name>.json`` (``json_text``) and ``<name>.png`` (``figure``) into each of the trainer's loggers.

    See the module docstring for where each logger gets them. Returns what was written: file paths, and for
    MLflow ``runs:/<run_id>/<file>`` artifact URIs, for W&B ``wandb:<run_id>/<name>`` for the image. An empty
    list on ranks other than global rank 0. Never raises for a failed write: it warns and goes on with the next
    logger.

    Example:
        >>> # paths = publish(trainer, "lr_range_test", json_text=result.to_json(), figure=result.plot())
    """
    if not isinstance(name, str) or not name or os.sep in name or name in (".", "..") or "/" in name:
        raise ArgumentError("name", name, "a file name without a directory")
    if not trainer.is_global_zero:
        return []
    written: list[str] = []
    handled = False
    for logger in trainer.loggers:
        kind = _kind(logger)
        if kind is None:
            continue
        handled = True
        try:
            written += _PUBLISHERS[kind](trainer, logger, name, json_text, figure)
        except Exception as err:  # noqa: BLE001 - a failed write must not stop rank 0 while others wait
            rank_zero_warn(f"lightning_clr: could not write {name!r} to {type(logger).__name__}: {err!r}")
    if not handled:
        directory = trainer.default_root_dir
        try:
            written += _write_files(directory, name, json_text, figure)
        except Exception as err:  # noqa: BLE001
            rank_zero_warn(f"lightning_clr: could not write {name!r} under {directory}: {err!r}")
    return list(dict.fromkeys(written))
