"""Every ```python block in README.md and docs/*.md runs as written.

Each block runs as a script of its own, with this test's interpreter, in a fresh temporary
directory (so the files a snippet writes, such as ``contacts.db``, go away) that links
``notebooks/`` in, so paths written relative to the repository root work. A snippet that needs
a server starts an ``isthmus.Sandbox`` itself, as a reader would.

An HTML comment on the line before a block changes how it runs:

- ``<!-- continue -->``: the block goes on from the block before it in the same file; both run
  as one script (for prose between two halves of one example).
- ``<!-- notebook -->``: the block is a Jupyter cell (top-level ``await``); it runs in a real
  kernel through nbclient.
- ``<!-- skip-test: why -->``: not run, for a deliberate fragment. Keep these rare; the reason
  is required and shows in the test report.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import isthmus

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_ROOT = str(Path(isthmus.__file__).resolve().parents[1])
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIME_LIMIT = 90  # seconds per snippet; the sandboxes they start are on 127.0.0.1

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_MARKER = re.compile(r"<!--\s*([a-z-]+)\s*(?::\s*(.*?))?\s*-->\s*$")
_KINDS = ("continue", "notebook", "skip-test")


@dataclass
class Snippet:
    where: str  # README.md:25, the line of the opening fence
    kind: str  # script, notebook or skip-test
    code: str
    reason: str = ""
    problems: list[str] = field(default_factory=list)


def _marker_before(text: str, start: int) -> tuple[str, str] | None:
    """The marker comment on the last non-blank line before offset `start`, if any."""
    before = text[:start].rstrip("\n").rsplit("\n", 1)[-1].strip()
    m = _MARKER.search(before)
    return (m.group(1), m.group(2) or "") if m and before.startswith("<!--") else None


def collect(path: Path, rel: str = "") -> list[Snippet]:
    text = path.read_text(encoding="utf-8")
    rel = rel or path.relative_to(ROOT).as_posix()
    snippets: list[Snippet] = []
    for m in _FENCE.finditer(text):
        where = f"{rel}:{text.count(chr(10), 0, m.start()) + 1}"
        marker = _marker_before(text, m.start())
        kind, reason = marker if marker else ("script", "")
        snippet = Snippet(where, kind, m.group(1), reason)
        if kind not in ("script", *_KINDS):
            snippet.problems.append(f"unknown marker <!-- {kind} -->; known: {', '.join(_KINDS)}")
        if kind == "skip-test" and not reason:
            snippet.problems.append("<!-- skip-test --> needs a reason: <!-- skip-test: why -->")
        if kind == "continue":
            if not snippets or snippets[-1].kind == "skip-test":
                snippet.problems.append("<!-- continue --> needs a runnable block before it in the same file")
            else:
                snippets[-1].code += "\n" + snippet.code
                snippets[-1].where += f"+{where.rsplit(':', 1)[1]}"
                continue
        snippets.append(snippet)
    return snippets


SNIPPETS = [s for path in DOCS for s in collect(path)]


def test_snippets_are_found():
    assert any(s.where.startswith("README.md") for s in SNIPPETS), "no python blocks found in README.md"
    assert any(s.where.startswith("docs/") for s in SNIPPETS), "no python blocks found in docs/*.md"


def test_markers_are_well_formed():
    bad = [f"{s.where}: {p}" for s in SNIPPETS for p in s.problems]
    assert not bad, "\n".join(bad)


def test_readme_shows_async_in_a_script_and_in_a_notebook():
    readme = [s for s in SNIPPETS if s.where.startswith("README.md")]
    assert any("asyncio.run(" in s.code and s.kind == "script" for s in readme), \
        "README.md: no script form of the async example (asyncio.run(main()))"
    assert any(s.kind == "notebook" and "await " in s.code and "async def" not in s.code for s in readme), \
        "README.md: no notebook form of the async example (top-level await, marked <!-- notebook -->)"


def test_markers_chain_skip_and_mark_notebook_cells(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("\n".join([
        "```python", "a = 1", "```", "prose", "<!-- continue -->", "```python", "print(a)", "```",
        "<!-- skip-test: needs a real CRM -->", "```python", "crm.get('/')", "```",
        "<!-- notebook -->", "```python", "await x", "```",
        "<!-- skip-test -->", "```python", "pass", "```", "```sh", "ls", "```", ""]))
    got = [(s.where, s.kind, s.code, s.reason, s.problems) for s in collect(page, "page.md")]
    assert got == [
        ("page.md:1+6", "script", "a = 1\n\nprint(a)\n", "", []),
        ("page.md:10", "skip-test", "crm.get('/')\n", "needs a real CRM", []),
        ("page.md:14", "notebook", "await x\n", "", []),
        ("page.md:18", "skip-test", "pass\n", "", ["<!-- skip-test --> needs a reason: <!-- skip-test: why -->"]),
    ]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "notebooks").symlink_to(ROOT / "notebooks", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run_script(code: str, where: str, cwd: Path) -> None:
    script = cwd / "snippet.py"
    script.write_text(code, encoding="utf-8")
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=cwd, capture_output=True, text=True,
                              timeout=TIME_LIMIT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{where}: the snippet did not finish within {TIME_LIMIT} s")
    if proc.returncode != 0:
        pytest.fail(f"{where}: the snippet failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", pytrace=False)
    # Warnings are errors in this suite; a snippet a reader copies is held to the same rule.
    if "Warning" in proc.stderr:
        pytest.fail(f"{where}: the snippet warned:\n{proc.stderr[-3000:]}", pytrace=False)


def _run_notebook_cell(code: str, where: str, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # silences jupyter_core's path notice
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=TIME_LIMIT,
                                     resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"{where}: the notebook cell failed:\n{exc}", pytrace=False)
    warned = [out.text for out in nb.cells[0].outputs
              if out.output_type == "stream" and out.name == "stderr" and "Warning" in out.text]
    assert not warned, f"{where}: the notebook cell warned: {warned}"


@pytest.mark.timeout(TIME_LIMIT + 60)
@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.where for s in SNIPPETS])
def test_snippet_runs(snippet: Snippet, workdir: Path, monkeypatch: pytest.MonkeyPatch):
    if snippet.problems:
        pytest.fail("; ".join(snippet.problems))
    if snippet.kind == "skip-test":
        pytest.skip(f"{snippet.where}: {snippet.reason}")
    # The child finds the package this test imports, installed or from the source tree.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")]))
    if snippet.kind == "notebook":
        _run_notebook_cell(snippet.code, snippet.where, workdir, monkeypatch)
    else:
        _run_script(snippet.code, snippet.where, workdir)
