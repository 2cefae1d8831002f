"""`kingest start --reload`: the watcher reports .py changes under the watched folders,
and what keeps reload mode from starting is reported as configuration problems."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

from kingest.runtime.reload import default_paths, reload_problems, watch_changes


def next_changes(changes: Generator[set[str], None, None], tries: int = 50) -> set[str]:
    """The first non-empty set of changes (each try waits at most about 0.1 s)."""
    for _ in range(tries):
        found = next(changes)
        if found:
            return found
    return set()


def test_a_python_file_written_under_a_watched_folder_is_reported(tmp_path: Path) -> None:
    package = tmp_path / "package"
    package.mkdir()
    changes = watch_changes([package])
    try:
        # Quiet: the watcher yields an empty set per wait instead of blocking.
        assert next(changes) == set()
        (package / "notes.txt").write_text("not code")
        (package / "module.py").write_text("VALUE = 1\n")
        found = next_changes(changes)
    finally:
        changes.close()
    assert found == {str(package / "module.py")}


def test_the_default_folders_are_the_two_packages() -> None:
    paths = default_paths()
    assert [path.name for path in paths] == ["kingest", "actors"]
    assert all((path / "__init__.py").is_file() for path in paths)
    assert reload_problems(paths) == []


def test_a_missing_folder_is_a_problem(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    assert reload_problems([tmp_path, missing]) == [f"--reload-dir {missing}: not a directory"]
