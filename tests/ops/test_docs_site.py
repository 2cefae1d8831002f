"""The documentation stays buildable and true: the site, the design's tests, the layout.

``mkdocs build --strict`` (with ``docs/hooks.py``, which generates the reference pages
from the code) fails on any warning: a link to a missing page, file or anchor, a page
missing from the navigation. The other checks hold the pages to the repository: every
test ``docs/design.md`` cites for an invariant exists, every module is on
``docs/layout.md``, and the README stays a front page whose links resolve.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MKDOCS = Path(sys.executable).with_name("mkdocs")

#: The README is the front page; the reference material lives in docs/.
README_MAX_BYTES = 15 * 1024


def test_the_site_builds_without_a_warning(tmp_path: Path) -> None:
    assert MKDOCS.exists(), f"mkdocs is not installed beside {sys.executable} (the test extra)"
    result = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "KINGEST_PROCESSES" in cli  # generated from the Typer application
    metrics = (tmp_path / "site" / "metrics" / "index.html").read_text()
    assert "kingest_partition_lag" in metrics
    design = (tmp_path / "site" / "design" / "index.html").read_text()
    assert 'class="mermaid"' in design  # rendered as a diagram, not as code


def _defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


def test_every_test_the_design_cites_exists() -> None:
    text = (DOCS / "design.md").read_text()
    every_test = set().union(*(_defined_tests(p) for p in (ROOT / "tests").rglob("test_*.py")))
    cited = re.findall(r"`(tests/[\w/]+(?:\.py)?/?)(?:::(\w+))?`", text)
    assert cited
    for path, name in cited:
        assert (ROOT / path).exists(), path
        if name:
            assert name in _defined_tests(ROOT / path), f"{path}::{name}"
    bare = set(re.findall(r"`(test_\w+)`", text))
    assert not bare - every_test, sorted(bare - every_test)


def test_the_design_numbers_the_invariants_once() -> None:
    numbers = re.findall(r"^### (\d+)\. ", (DOCS / "design.md").read_text(), re.M)
    assert numbers == [str(n) for n in range(1, len(numbers) + 1)]
    assert len(numbers) >= 7


def test_the_layout_page_names_every_module() -> None:
    text = (DOCS / "layout.md").read_text()
    packages = sorted(p.parent for p in (ROOT / "kingest").glob("*/__init__.py"))
    missing = [f"kingest/{p.name}/" for p in packages if f"`kingest/{p.name}/`" not in text]
    for package in [*packages, ROOT / "actors"]:
        for module in package.glob("*.py"):
            if module.name != "__init__.py" and f"`{module.name}`" not in text:
                missing.append(str(module.relative_to(ROOT)))
    assert not missing, f"add to docs/layout.md: {missing}"


def test_the_readme_is_a_front_page_whose_links_resolve() -> None:
    readme = ROOT / "README.md"
    assert readme.stat().st_size <= README_MAX_BYTES
    text = readme.read_text()
    assert "docs/design.md" in text
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing
