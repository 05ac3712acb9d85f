"""How the ``sieve`` commands fail and log: expected failures are one line, bugs one log file.

:func:`clean_errors` wraps every command: a :class:`~sieve.errors.SieveError`, or an OS error the
user's machine causes (:data:`OS_PROBLEMS`: a full disk, a read-only or forbidden folder, a name
too long), prints one ``error:`` line and exits 2; any other exception prints one line naming a log
file under ``$SIEVE_CACHE/logs/`` that holds the traceback, and exits 1. Never a traceback on the
terminal.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from sieve.errors import SieveError


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for noisy in ("transformers", "datasets", "lm_eval", "ray"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _crash_log(exc: BaseException) -> Path:
    from sieve.resources import cache_dir

    path = cache_dir() / "logs" / f"sieve-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"sieve {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(exc)))
    return path


#: OS errors that the user's machine causes, not sieve: one ``error:`` line and exit 2
OS_PROBLEMS = {
    errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied", errno.EPERM: "operation not permitted", errno.ENAMETOOLONG: "file name too long",
    errno.ENOTDIR: "not a folder", errno.EISDIR: "is a folder",
}
WRITE_PROBLEMS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def os_problem(exc: OSError) -> str | None:
    """``"no space left on device writing runs/x/checkpoint/state.json"``, ``"permission denied:
    PATH"``: the line for an error of :data:`OS_PROBLEMS`; ``None`` for any other (a bug)."""
    problem = OS_PROBLEMS.get(exc.errno)
    path = exc.filename2 or exc.filename
    if problem is None or path is None:
        return problem
    return f"{problem} writing {path}" if exc.errno in WRITE_PROBLEMS else f"{problem}: {path}"


def _bug(exc: BaseException) -> typer.Exit:
    """One line naming the log file that holds the traceback; exit 1."""
    log_path = _crash_log(exc)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    typer.echo(f"error: unexpected {type(exc).__name__}: {first} (a bug; traceback in {log_path})", err=True)
    return typer.Exit(1)


def clean_errors(fn):
    """Run a command: a SieveError, or an OS error the machine causes (a full disk, a read-only or
    forbidden folder, a name too long), is one line and exit 2; any other exception one line naming
    the log file that holds its traceback, and exit 1. Never a traceback on the terminal."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except SieveError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except OSError as exc:
            problem = os_problem(exc)
            if problem is None:
                raise _bug(exc) from None
            typer.echo(f"error: {problem}", err=True)
            raise typer.Exit(2) from None
        except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into a log file
            raise _bug(exc) from None

    return wrapper
