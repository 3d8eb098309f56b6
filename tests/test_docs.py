"""README and the documentation site: every python code block runs as written, the site builds.

Code blocks: the fenced ```python blocks of one page run in order in one fresh namespace,
so a page may build on its earlier blocks. A block that needs context a reader does not
need to see gets it from a hidden prelude, an HTML comment placed before it::

    <!-- prelude
    code run in the page's namespace at this point
    -->

(blocks that are not meant to run are fenced as ```text or ```bash).

The pages run in one separate process (``python tests/test_docs.py PAGE...``) with XLA's
fast-compiling code generation of ``tests/conftest.py``: the blocks check behaviour, not
speed.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md"] + sorted(DOCS.rglob("*.md"))
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$|^<!-- prelude[ \t]*\n(.*?)^-->",
                    re.MULTILINE | re.DOTALL)


def code_blocks(page: pathlib.Path) -> list[str]:
  """The page's python blocks and preludes, in order."""
  return [block or prelude for block, prelude in _BLOCK.findall(page.read_text())]


def _page_id(page):
  return str(page.relative_to(ROOT))


RUNNABLE = [page for page in PAGES if code_blocks(page)]


def run_page(page: pathlib.Path) -> None:
  namespace = {"__name__": "__docs__"}
  for i, code in enumerate(code_blocks(page)):
    exec(compile(code, f"{_page_id(page)}[block {i}]", "exec"), namespace)  # noqa: S102


@pytest.fixture(scope="module")
def page_errors():
  """Runs every page once in a fresh process; page id -> traceback ('' when it ran)."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4 "
                       "--xla_cpu_use_fusion_emitters=false "
                       "--xla_backend_optimization_level=0")
  result = subprocess.run([sys.executable, __file__] + [str(p) for p in RUNNABLE],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
  reports = [json.loads(line[len(_REPORT):]) for line in result.stdout.splitlines()
             if line.startswith(_REPORT)]
  assert reports, result.stderr[-3000:]
  return dict(reports)


_REPORT = "DOCS-PAGE "


@pytest.mark.parametrize("page", RUNNABLE, ids=_page_id)
def test_code_blocks_run(page, page_errors):
  assert _page_id(page) in page_errors, "the page did not run"
  assert not page_errors[_page_id(page)], page_errors[_page_id(page)]


def test_block_extraction_sees_blocks_and_preludes_in_order(tmp_path):
  page = tmp_path / "page.md"
  page.write_text("text\n```python\na = 1\n```\n<!-- prelude\nb = a + 1\n-->\n"
                  "```bash\nexit 1\n```\n```python\nc = b\n```\n")
  assert code_blocks(page) == ["a = 1\n", "b = a + 1\n", "c = b\n"]


def test_readme_is_short_and_keeps_the_quick_start_commands():
  readme = (ROOT / "README.md").read_text()
  assert len(readme.splitlines()) <= 200
  assert 'python -m pip install ".[examples]" && python examples/toy.py' in readme
  assert 'python -m pip install ".[test]" && python -m pytest' in readme


def test_every_method_has_an_api_page_in_the_nav_and_a_readme_line():
  import conicgrad_jax as cg
  names = set(cg.methods())
  pages = {p.stem for p in (DOCS / "api" / "methods").glob("*.md")}
  assert pages == names
  nav = (ROOT / "mkdocs.yml").read_text()
  readme = (ROOT / "README.md").read_text()
  for name in names:
    assert f"::: conicgrad_jax.{name}\n" in (DOCS / "api" / "methods" / f"{name}.md").read_text()
    assert f"api/methods/{name}.md" in nav, name
    assert f"(docs/api/methods/{name}.md)" in readme, name
  # The method count the front pages state.
  assert f"implements {len(names)} of them" in readme
  assert f"implements {len(names)} such methods" in (DOCS / "index.md").read_text()


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_relative_links_resolve_in_the_repository():
  """Links and images of README and the docs point to files that exist, read in the repository."""
  broken = []
  for page in PAGES:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    for target in _LINK.findall(text):
      path = target.split("#")[0]
      if not path or re.match(r"[a-z]+:", path):
        continue
      if not (page.parent / path).exists():
        broken.append(f"{_page_id(page)}: {target}")
  assert not broken, broken


def test_every_test_the_docs_cite_exists():
  """A claim names the test that proves it: each ``test_...`` cited in README and docs is one."""
  tests = DOCS.parent / "tests"
  defined = set()
  for path in tests.rglob("*.py"):
    defined |= set(re.findall(r"^\s*def (test_\w+)", path.read_text(), flags=re.MULTILINE))
    defined.add(path.stem)
  cited = {name for page in PAGES for name in re.findall(r"\b(test_\w+)", page.read_text())}
  assert len(cited) >= 50, sorted(cited)
  assert not cited - defined, sorted(cited - defined)


def test_docs_build_without_warnings(tmp_path):
  pytest.importorskip("mkdocs")
  pytest.importorskip("mkdocstrings_handlers.python")
  env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
  result = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
       str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
      capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (tmp_path / "site" / "api" / "methods" / "conicgrad" / "index.html").exists()
  # The plots the pages link as ../benchmarks/results/ are published under results/.
  benchmarks_page = (tmp_path / "site" / "benchmarks" / "index.html").read_text()
  assert '../results/toy.png"' in benchmarks_page
  assert (tmp_path / "site" / "results" / "toy.png").exists()


if __name__ == "__main__":
  import traceback
  for arg in sys.argv[1:]:
    page = pathlib.Path(arg)
    try:
      run_page(page)
      error = ""
    except Exception:  # noqa: BLE001 (reported to the test)
      error = traceback.format_exc()
    print(_REPORT + json.dumps([_page_id(page), error]), flush=True)
