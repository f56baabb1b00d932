"""Saving and loading training state: atomic writes, safe reads, one-line errors.

A checkpoint is a ``dict`` of tensors and plain values (``str``, ``int``, ``float``, ``bool``,
``None`` and lists / tuples / dicts of those — what ``torch.load(weights_only=True)`` accepts),
so loading it never runs code from the file.

* :func:`save_checkpoint` writes to a temporary file in the target directory, flushes and
  ``fsync``s it, then ``os.replace``s it over the target: a crash leaves either the old or the
  new checkpoint, never a torn one.
* :func:`load_checkpoint` turns every failure a user can cause (missing, corrupt, or pickled
  code) into a :class:`scoretut.errors.UsageError` that names the fix.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from scoretut.errors import UsageError

PLAIN_TYPES = (str, int, float, bool, type(None))


def check_plain(obj: Any, where: str = "state") -> None:
    """Raise ``TypeError`` naming the first value in ``obj`` that is not a tensor or plain data."""
    if isinstance(obj, (torch.Tensor, *PLAIN_TYPES)):
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where} has a key of type {type(key).__name__}; use str or int keys")
            check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; checkpoints hold only "
        "tensors and plain data (save state_dict()s and config dicts, not objects)"
    )


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write a file atomically: ``write(tmp)`` fills a temporary file next to ``path``, which is
    made durable (fsync) and renamed over ``path``; if anything fails, ``path`` is left as it was.
    Parent directories are created; :class:`UsageError` if the directory cannot be written."""
    path = Path(path)
    directory = path.parent
    tmp: str | None = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=path.suffix or ".tmp")
        os.close(fd)
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are not secrets
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(directory)
    except OSError as e:
        raise UsageError(f"cannot write to {directory}: {e.strerror or e}; choose another `out_dir`") from e
    finally:
        if tmp is not None:  # the write failed part-way: leave the previous file alone
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` to ``path`` (:func:`atomic_write`); ``TypeError`` if ``state``
    holds anything but tensors and plain data."""
    check_plain(state)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(state, f)

    return atomic_write(path, write)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _is_pickle(path: Path) -> bool:
    """Whether the file starts like a torch zip archive or a pickle (protocol 2–5 header)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``.

    Raises :class:`UsageError` when the file is missing, unreadable, corrupt or truncated, or
    would need to unpickle code (custom classes) to load.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a checkpoint file" if path.is_dir() else "does not exist"
        raise UsageError(f"checkpoint {path} {what}; pass the path of a .pt file written by scoretut train")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e) or "Unsupported class" in str(e) or _is_pickle(path):
            raise UsageError(
                f"{path} contains objects or code that scoretut will not unpickle (it loads with "
                "torch.load(weights_only=True)); for a clean checkpoint load it once in Python you trust "
                "and re-save only tensors and plain values, e.g. torch.save(model.state_dict(), 'clean.pt')"
            ) from None
        raise UsageError(f"{path} is not a readable checkpoint (corrupt or not a torch file); re-run training to recreate it") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}; check the path and its permissions") from None
    except (RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise UsageError(f"{path} is not a readable checkpoint (corrupt or truncated); re-run training to recreate it") from None
    if not isinstance(state, dict):
        raise UsageError(f"{path} is not a scoretut checkpoint (holds a {type(state).__name__}, not a dict)")
    return state
