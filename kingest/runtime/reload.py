"""``kingest start --reload``: restart the pipeline whenever its code changes (development).

The pipeline runs as a supervised child process
(:class:`~kingest.runtime.supervisor.ProcessSupervisor`),
never in the watching process, so every restart is a fresh interpreter that imports the
changed code. A change stops the children the way SIGTERM does — drain, commit, exit —
and starts them again at once; offsets committed before the restart are where the new
pipeline resumes, so a reload loses and duplicates nothing. A child that exits on its
own (a syntax error, say) waits for the next change.

Changes are noticed by :mod:`watchfiles` (inotify on Linux), an optional dependency:
``pip install 'kingest[reload]'``. Only ``.py`` files count; by default the ``kingest``
and ``actors`` packages are watched, wherever they are installed.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Generator, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any, Final

import actors
import kingest
from kingest.config import Settings
from kingest.runtime.supervisor import run_supervisor

__all__ = ["DEBOUNCE_MS", "default_paths", "reload_problems", "run_reloading", "watch_changes"]

log = logging.getLogger("kingest.runtime.reload")

#: How long the watcher gathers a burst of changes (an editor's save, a `git checkout`)
#: into one restart.
DEBOUNCE_MS: Final = 300
#: The longest one wait for changes blocks, so signals and exits are acted on promptly.
WAIT_MS: Final = 100
_MISSING = "--reload needs the watchfiles package: pip install 'kingest[reload]'"


def default_paths() -> list[Path]:
    """The directories of the ``kingest`` and ``actors`` packages."""
    return [Path(kingest.__file__).parent, Path(actors.__file__).parent]


def reload_problems(paths: Sequence[Path]) -> list[str]:
    """What stops ``--reload`` from working, as configuration errors."""
    problems = [f"--reload-dir {path}: not a directory" for path in paths if not path.is_dir()]
    try:
        importlib.import_module("watchfiles")
    except ImportError:
        problems.append(_MISSING)
    return problems


def watch_changes(paths: Sequence[Path]) -> Generator[set[str], None, None]:
    """Sets of changed ``.py`` files under ``paths``; an empty set after each quiet
    :data:`WAIT_MS`. Closing the iterator stops the watcher."""
    watchfiles: Any = importlib.import_module("watchfiles")
    for changes in watchfiles.watch(
        *paths,
        watch_filter=watchfiles.PythonFilter(),
        debounce=DEBOUNCE_MS,
        rust_timeout=WAIT_MS,
        yield_on_timeout=True,
        # The supervisor's own handlers take SIGTERM/SIGINT; the watcher must not.
        raise_interrupt=False,
    ):
        yield {path for _change, path in changes}


def run_reloading(
    settings: Settings, processes: int, environ: Mapping[str, str], paths: Sequence[Path]
) -> int:
    """Run ``processes`` pipelines, restarted on every change under ``paths``; the exit
    code of the last stop, as ``kingest start --processes N`` has it."""
    log.info(
        "reload mode: watching %s for changes to .py files",
        ", ".join(str(path) for path in paths),
    )
    with closing(watch_changes(paths)) as changes:
        return run_supervisor(settings, processes, environ, lambda: next(changes, set()))
