"""Atomic writes: a crash mid-write never leaves a torn file behind.

Every file that matters (checkpoints, statistics, allocations, configs) is written to a temporary
file in the same directory, flushed, fsynced, and renamed over the target; ``os.replace`` is
atomic on POSIX, so readers see either the old or the new content, and fsyncing the directory
afterwards makes the rename itself survive a power cut. Files and folders get the modes the
user's umask gives (``tempfile``'s private 0600 / 0700 are widened before the rename).
:func:`check_output` guards where a command may write at all: never over, around or into what it
reads, and over a previous output only with ``--force``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from safetensors.torch import load_file, save_file

from sieve.errors import SieveError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically: the file is fsynced
    before the rename and its folder after it (only then is the rename itself on disk). The file
    gets the mode a plain ``open`` would give it (``0o666`` less the umask), not ``mkstemp``'s 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~current_umask())
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise named_os_error(exc, path) from exc
    return _move_into_place(tmp_path, path)


def _move_into_place(tmp_path: Path, path: Path) -> Path:
    """Rename ``tmp_path`` over ``path`` and fsync their folder (the temporary never stays behind)."""
    try:
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise named_os_error(exc, path) from exc
    finally:
        tmp_path.unlink(missing_ok=True)
    return path


def link_atomic(source: str | Path, path: str | Path) -> bool:
    """Make ``path`` a hard link to ``source`` atomically (link to a temporary sibling, rename, fsync
    the folder): the same bytes on disk once, however many runs hold them. ``False`` where the file
    system cannot link them (another device, no hard links); the caller then writes a copy. Safe
    because sieve never writes a file in place: every rewrite is a new file renamed over the old."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.parent / f".{path.name}.{os.getpid()}.link.tmp"
    tmp_path.unlink(missing_ok=True)
    try:
        os.link(source, tmp_path)
    except OSError:
        return False
    _move_into_place(tmp_path, path)
    return True


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def fsync_dir(folder: str | Path) -> None:
    """Make a rename, creation or deletion inside ``folder`` durable (POSIX: fsync the folder itself)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_path(out: str | Path, write: Callable[[Path], None], *, folder: bool) -> Path:
    """Write into a unique temporary sibling of ``out``, then move it into place (a replaced
    output is removed only after the new one is complete). Modes follow the umask (``0o777`` /
    ``0o666`` less it, as ``mkdir`` / ``open`` give), not ``mkdtemp`` / ``mkstemp``'s private 0700 / 0600."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
        os.close(fd)
        tmp = Path(name)
    old = None
    try:
        write(tmp)
        os.chmod(tmp, (0o777 if folder else 0o666) & ~current_umask())
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent)) / "old"
            out.rename(old)
        tmp.rename(out)
        fsync_dir(out.parent)
    except OSError as exc:
        raise named_os_error(exc, out) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink()
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)
    return out


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_yaml(path: str | Path, obj: Any) -> Path:
    return write_text(path, yaml.safe_dump(obj, sort_keys=False))


def write_safetensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def append_jsonl(path: str | Path, obj: Any) -> None:
    """Append one line; a kill mid-append leaves a torn *last* line, which :func:`read_jsonl` drops."""
    with open(path, "a") as fh:
        fh.write(json.dumps(obj) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | Path) -> list[Any]:
    """Every line of a JSON-lines file. A damaged last line is what a kill mid-append leaves and is
    dropped; a damaged line anywhere else is one error naming the file and the line."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise SieveError(f"{path} line {number} is damaged (not JSON); fix or delete that line") from None
    return rows


def read_progress_log(path: str | Path, key: str) -> list[dict[str, Any]]:
    """The rows of a progress log (``history.jsonl``): :func:`read_jsonl`, and every row a JSON
    object with an integer ``key`` (``generation``, ``step``); else one error naming the line."""
    rows = read_jsonl(path)
    for number, row in enumerate(rows, 1):
        if not (isinstance(row, dict) and isinstance(row.get(key), int)):
            raise SieveError(f"{path} line {number} is damaged (not a JSON object with an integer "
                             f"'{key}'); fix or delete that line")
    return rows


def truncate_progress_log(path: str | Path, key: str, last: int) -> None:
    """Keep the rows of a progress log up to ``row[key] == last`` (a resume recomputes the rest)."""
    rows = [r for r in read_progress_log(path, key) if r[key] <= last]
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (hex, first 16 characters)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def named_os_error(exc: OSError, path: str | Path) -> OSError:
    """``exc`` naming the file the user asked for instead of its temporary sibling (or nothing, as
    a failed ``write`` reports), so a full disk reads ``... writing runs/x/checkpoint/state.json``."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


# ---------------------------------------------------------------------------- where outputs may go
def input_clash(out: str | Path, inputs: Mapping[str, str | Path | None]) -> tuple[str, Path, str] | None:
    """The first input that ``out`` is, contains or lies inside (symlinks resolved), as
    ``(what, path, relation)``; ``None`` when ``out`` touches no input."""
    target = Path(out).expanduser().resolve()
    for what, path in inputs.items():
        if path is None:
            continue
        source = Path(path).expanduser().resolve()
        if target == source:
            return what, Path(path), "is"
        if target in source.parents:
            return what, Path(path), "contains"
        if source in target.parents:
            return what, Path(path), "lies inside"
    return None


def check_output(out: str | Path, inputs: Mapping[str, str | Path | None], *, force: bool,
                 writes: Literal["file", "folder"] = "file", flag: str = "--out") -> Path:
    """Refuse, before any work, an output that could lose data.

    ``--force`` replaces a previous *output*, never an input: ``out`` may not be, contain or lie
    inside any of ``inputs`` (``{"the model": path, ...}``, the paths the command reads). An
    existing ``out`` must be of the kind the command ``writes`` (``"file"`` or ``"folder"``) and is
    replaced only with ``force`` (an empty folder excepted).
    """
    out = Path(out)
    clash = input_clash(out, inputs)
    if clash is not None:
        what, path, relation = clash
        raise SieveError(f"{flag} {out} {relation} {what} ({path}), which this command reads; --force replaces a "
                         "previous output, never an input")
    if out.exists() or out.is_symlink():
        if writes == "file" and out.is_dir():
            raise SieveError(f"{flag} {out} is a folder; this command writes a file there")
        if writes == "folder" and not out.is_dir():
            raise SieveError(f"{flag} {out} is a file; this command writes a folder there")
        if not force and not (out.is_dir() and not any(out.iterdir())):
            raise SieveError(f"{flag} {out} exists; pass --force to replace it")
    return out
