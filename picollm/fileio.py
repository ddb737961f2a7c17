"""All-or-nothing writes with the permissions a plain ``open(path, "w")`` gives (not ``mkstemp``'s 0600)."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process umask: from /proc on Linux (thread-safe), else by setting it and straight back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic(path: Path, write: Any, publish: Any = None) -> None:
    """Write a temporary file beside ``path`` with ``write``, then ``publish`` it under ``path`` (default: a rename;
    or a link that fails where ``path`` exists); the temporary never outlives the call."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        write(tmp)
        (publish or os.replace)(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def _json_text(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, _json_text(data))


NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}


def _link_once(tmp: str, path: Path) -> None:
    """Publish ``tmp`` as ``path`` unless ``path`` exists (FileExistsError), then drop the temporary name."""
    try:
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


def write_json_once(path: str | Path, data: Any) -> bool:
    """Write ``path`` whole unless it exists; True where this call wrote it. Of processes racing, one does: a hard
    link fails where the name exists (where the file system has no hard links, an exclusive create)."""
    path, text = Path(path), _json_text(data)
    try:
        _atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), publish=_link_once)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise
        return _create_once(path, text)
    return True


def _create_once(path: Path, text: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
    except BaseException:
        path.unlink(missing_ok=True)  # created here, then cut short: no half-written file is left
        raise
    return True


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import torch  # the JSON and text writers, which every command line imports, stay light

    _atomic(Path(path), lambda tmp: torch.save(obj, tmp))
