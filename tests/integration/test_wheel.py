"""The wheel as users get it: built from this tree, installed into a fresh virtualenv,
and run from outside the source tree — `kingest --version`, `kingest migrate`,
`kingest produce` and `kingest start` — against the real broker and PostgreSQL.

By default the test builds the wheel and installs it with ``--no-deps`` into a new
virtualenv that borrows the test environment's dependencies (no downloads, a few
seconds). ``tox -e wheel`` installs the wheel *with* its dependencies from PyPI into an
env of its own and points ``KINGEST_TEST_INSTALLED_BIN`` at that env's ``bin``; the test
then runs what tox installed.
"""

from __future__ import annotations

import email
import os
import signal
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

import kingest
from tests.integration.support import kingest_env, stored_event_ids, wait_for

ROOT = Path(__file__).parents[2]
INSTALLED_BIN = "KINGEST_TEST_INSTALLED_BIN"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def build_wheel(outdir: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(outdir)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = outdir.glob("kingest-*.whl")
    return wheel


def fresh_venv(where: Path, wheel: Path) -> Path:
    """A new virtualenv holding the wheel; its dependencies come from this env's
    site-packages, added after its own (a path entry, so no .pth file of ours runs)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return where / "bin"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def installed_bin(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    given = os.environ.get(INSTALLED_BIN)
    if given:
        yield Path(given)
    else:
        yield fresh_venv(tmp_path_factory.mktemp("venv") / "env", wheel)


def test_the_wheel_carries_the_migrations_the_protos_and_the_entry_point(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (dist_info,) = {name.split("/")[0] for name in names if ".dist-info/" in name}
        metadata = email.message_from_bytes(archive.read(f"{dist_info}/METADATA"))
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    for source, packaged in (("sql", "kingest/_data/sql"), ("proto", "kingest/_data/proto")):
        expected = {
            f"{packaged}/{path.relative_to(ROOT / source)}"
            for path in (ROOT / source).rglob("*")
            if path.is_file()
        }
        assert expected, source
        assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    assert {"kingest/py.typed", "actors/py.typed", "kingest/schema/v1/events_pb2.py"} <= names
    assert not [name for name in names if name.startswith(("tests/", "ops/"))]
    assert metadata["Version"] == kingest.__version__
    assert "kingest = kingest.cli:main" in entry_points


def installed_env(bin_dir: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Only the installed environment's tools and ``env``: nothing of this checkout."""
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", **(env or {})}


def run_installed(
    bin_dir: Path, cwd: Path, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "kingest"), *args],
        cwd=cwd,
        env=installed_env(bin_dir, env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_installed_wheel_migrates_and_ingests_outside_the_source_tree(
    installed_bin: Path,
    kafka_bootstrap: str,
    database_url: str,
    topic_factory: Callable[[int], str],
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    found = subprocess.run(
        [installed_bin / "python", "-c", "import kingest; print(kingest.__file__)"],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert not Path(found).is_relative_to(ROOT / "kingest"), f"from the source tree: {found}"
    assert "site-packages" in Path(found).parts, found

    version = run_installed(installed_bin, workdir, "--version")
    assert version.stdout.strip() == f"kingest {kingest.__version__}", version.stderr

    topic = topic_factory(2)
    env = kingest_env(kafka_bootstrap, database_url, topic, "from-the-wheel")
    migrate = run_installed(installed_bin, workdir, "migrate", env=env)
    assert migrate.returncode == 0, migrate.stderr
    migrations = len(list((ROOT / "sql").glob("*.sql")))
    assert f"applied {migrations} migrations" in migrate.stdout

    produce = run_installed(
        installed_bin,
        workdir,
        "produce",
        "--count",
        "2000",
        "--topic",
        topic,
        "--bootstrap-servers",
        kafka_bootstrap,
        env=env,
    )
    assert produce.returncode == 0, produce.stderr
    assert "delivered 2000 of 2000" in produce.stdout

    log = (tmp_path / "kingest.log").open("wb")
    start = subprocess.Popen(
        [str(installed_bin / "kingest"), "start"],
        cwd=workdir,
        env=installed_env(installed_bin, env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: sum(stored_event_ids(database_url).values()) >= 2000,
            timeout=90,
            what="the stream stored by the installed kingest",
        )
        start.send_signal(signal.SIGTERM)
        assert start.wait(60) == 0, (tmp_path / "kingest.log").read_text()
    finally:
        if start.poll() is None:
            start.kill()
        log.close()
    stored = stored_event_ids(database_url)
    assert sum(stored.values()) == 2000
    assert max(stored.values()) == 1
