"""The code of the README and of the docs pages runs, and the site lists
every page.

Every ```python block of README.md and docs/*.md runs: a page's blocks in
order, in one namespace, in a new Python process started in an empty
folder (what a reader who pastes them gets). A block after the comment
`<!-- new-process -->` starts a new process (a block that picks another
Keras backend); one after `<!-- no-run -->` does not run (for what cannot
run offline). `make docs` builds the site itself (`mkdocs build --strict`).
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
PAGES = ["README.md"] + sorted(
    f"docs/{name}" for name in os.listdir(DOCS) if name.endswith(".md")
)
_FENCE = re.compile(
    r"(?:<!--\s*(?P<marker>[\w-]+)\s*-->\s*\n)?"
    r"^```(?P<language>[\w-]*)[^\n]*\n(?P<code>.*?)^```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
MARKERS = ("no-run", "new-process")

# Runs the blocks given as JSON on standard input, in one namespace; a
# failing block prints its traceback (its file name is the page and line).
RUNNER = textwrap.dedent(
    """
    import json
    import sys

    namespace = {"__name__": "__main__"}
    for name, code in json.load(sys.stdin):
        exec(compile(code, name, "exec"), namespace)
    """
)


def code_blocks(text, page="page"):
    """The fenced blocks of `text`: a list of dicts with `language`,
    `code`, `line` (of the fence), `marker` (the comment before it, or
    `None`) and `name` (`"<page, line N>"`)."""
    blocks = []
    for match in _FENCE.finditer(text):
        marker = match.group("marker")
        if marker is not None and marker not in MARKERS:
            raise ValueError(
                f"{page}: unknown marker <!-- {marker} --> (known: "
                f"{', '.join(MARKERS)}). Received: marker={marker!r}"
            )
        line = text.count("\n", 0, match.start("language")) + 1
        blocks.append(
            {
                "language": match.group("language"),
                "code": match.group("code"),
                "line": line,
                "marker": marker,
                "name": f"<{page}, line {line}>",
            }
        )
    return blocks


def runs(blocks):
    """The python blocks to run, as a list of runs (one process each) of
    `(name, code)` pairs."""
    groups = [[]]
    for block in blocks:
        if block["language"] != "python" or block["marker"] == "no-run":
            continue
        if block["marker"] == "new-process" and groups[-1]:
            groups.append([])
        groups[-1].append((block["name"], block["code"]))
    return [group for group in groups if group]


def _page_runs(page):
    with open(os.path.join(ROOT, page), encoding="utf-8") as file:
        return runs(code_blocks(file.read(), page))


# Pages whose blocks a test of their own runs, checking what the page says
# they do (in the process of the suite, in an empty folder too).
OWN_TESTS = {"docs/diagnosis.md": "tests/diagnosis/test_docs_page.py"}


# Each page starts Keras and TensorFlow in a new process (5-10 s on 2
# cores), and most train a model: every page is slow (12-45 s measured).
@pytest.mark.slow
@pytest.mark.parametrize(
    "page",
    [page for page in PAGES if _page_runs(page) and page not in OWN_TESTS],
)
def test_code_blocks_run(page, tmp_path):
    env = dict(os.environ)
    env["KERAS_BACKEND"] = "tensorflow"
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT, *filter(None, [env.get("PYTHONPATH")])]
    )
    for number, group in enumerate(_page_runs(page)):
        folder = tmp_path / f"run{number}"
        folder.mkdir()
        result = subprocess.run(
            [sys.executable, "-c", RUNNER],
            input=json.dumps(group),
            capture_output=True,
            text=True,
            cwd=folder,
            env=env,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-4000:]


def test_markers_skip_and_split():
    text = textwrap.dedent(
        """
        ```python
        a = 1
        ```
        <!-- no-run -->
        ```python
        download()
        ```
        ```bash
        make test
        ```
        <!-- new-process -->
        ```python
        b = 2
        ```
        ```python
        c = b
        ```
        """
    )
    assert runs(code_blocks(text, "page.md")) == [
        [("<page.md, line 2>", "a = 1\n")],
        [("<page.md, line 13>", "b = 2\n"), ("<page.md, line 16>", "c = b\n")],
    ]
    with pytest.raises(ValueError, match="Received: marker='norun'"):
        code_blocks("<!-- norun -->\n```python\nx\n```\n", "page.md")


def test_a_failing_block_fails_the_page(tmp_path):
    group = [("<page.md, line 1>", "x = 1\n"), ("<page.md, line 5>", "x.y\n")]
    result = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps(group),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1
    assert 'File "<page.md, line 5>", line 1' in result.stderr
    assert "AttributeError: 'int' object has no attribute 'y'" in result.stderr


def test_site_lists_every_page():
    # mkdocs.yml's nav names every page of docs/ (the strict build fails on
    # a nav entry without its page, but only warns on a page left out).
    with open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8") as file:
        nav = re.findall(
            r"^\s*- (?:[^:\n]+: )?([\w/.-]+\.md)\s*$", file.read(), re.M
        )
    pages = []
    for folder, _, names in os.walk(DOCS):
        for name in names:
            if name.endswith(".md"):
                path = os.path.relpath(os.path.join(folder, name), DOCS)
                pages.append(path.replace(os.sep, "/"))
    assert sorted(nav) == sorted(pages)


def test_readme_has_no_relative_images():
    # A package index shows the README without the repository's files.
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as file:
        images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", file.read())
    assert [src for src in images if "://" not in src] == []
