"""Every ```python block of README.md and docs/*.md runs, offline, and every relative link
points to a file that exists.

Each page runs in its own interpreter, in a fresh temporary directory, with the test
environment (no ``OPENAI_API_KEY``, litellm's offline price map). Each block gets a fresh
namespace, unless its page carries the marker :data:`SHARED`: then the page's blocks share one
namespace, in order. A block preceded by ``<!-- not run: reason -->`` is skipped (a server that
runs forever, say); keep those rare.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: A page with this comment runs its blocks in one namespace, in order.
SHARED = "<!-- doc-test: shared namespace -->"
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(\S.*?)\s*-->$")
FENCE = re.compile(r"^(\s*)```(\w*)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None  # the reason given by <!-- not run: ... -->


def blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown text."""
    found: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, lang = match.group(1), match.group(2)
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1  # the closing fence
        if lang != "python":
            continue
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()),
                      "")
        skipped = NOT_RUN.match(before)
        reason = skipped.group(1) if skipped else None
        found.append(Block(start + 1, "\n".join(body) + "\n", reason))
    return found


#: The child: runs the blocks it is given, stops at the first that raises.
CHILD = r"""
import json, sys, traceback
page, shared, blocks = json.loads(sys.stdin.read())
namespace = None
for line, code in blocks:
    if namespace is None or not shared:
        namespace = {"__name__": "__main__"}
    try:
        exec(compile(code, f"{page}:{line}", "exec"), namespace)
    except BaseException:
        print(f"{page}: the block at line {line} raised:", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
    print(f"ok {line}", flush=True)
"""


def run_page(name: str, text: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the page's blocks in a fresh interpreter in ``cwd``."""
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_OFFLINE_MODE": "true"}
    for name_ in [key for key in env if key.startswith(("OPENAI_", "QUOTA_HOOKS_"))]:
        del env[name_]  # the docs must not depend on a key or on the caller's limits
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    runnable = [(b.line, b.code) for b in blocks(text) if b.skip is None]
    payload = json.dumps([name, SHARED in text, runnable])
    return subprocess.run([sys.executable, "-c", CHILD], input=payload, capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_python_block_runs(page: Path, tmp_path: Path) -> None:
    text = page.read_text()
    found = blocks(text)
    done = run_page(page.name, text, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    ran = [line for line in done.stdout.splitlines() if line.startswith("ok ")]
    assert len(ran) == sum(b.skip is None for b in found)


def test_skips_are_rare_and_explained() -> None:
    all_blocks = [b for page in PAGES for b in blocks(page.read_text())]
    skipped = [b for b in all_blocks if b.skip is not None]
    assert len(all_blocks) >= 20
    assert len(skipped) <= 3, [b.skip for b in skipped]


def anchors(path: Path) -> set[str]:
    """The heading anchors of a Markdown file, as GitHub makes them."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    found = set()
    for heading in re.findall(r"^#+\s+(.*?)\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_point_to_files(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links in code don't count
    broken = []
    for match in LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path) if path else page
        if not file.exists() or (
            anchor and file.suffix == ".md" and anchor not in anchors(file)
        ):
            broken.append(target)
    assert not broken, f"{page.name}: links to missing files or headings: {broken}"


def test_anchors_follow_github() -> None:
    page = ROOT / "docs" / "storage.md"
    assert {"what-survives-what", "how-usage-is-counted", "sqlite"} <= anchors(page)


def test_the_docs_pages_exist() -> None:
    names = {p.name for p in PAGES}
    assert {"adapters.md", "enforcement.md", "alerts.md", "storage.md", "server.md", "cli.md",
            "pricing.md", "observability.md", "seed.md", "faq.md", "pairing.md"} <= names


# The runner itself: a raising block fails the page, a marked block is skipped, and a shared
# page keeps its names from one block to the next.


def test_a_raising_block_fails(tmp_path: Path) -> None:
    page = "ok\n\n```python\nx = 1\n```\n\n```python\nraise RuntimeError('boom')\n```\n"
    done = run_page("bad.md", page, tmp_path)
    assert done.returncode == 1
    assert "the block at line 7 raised" in done.stderr and "boom" in done.stderr


def test_a_not_run_block_is_skipped(tmp_path: Path) -> None:
    page = "<!-- not run: serves forever -->\n```python\nraise SystemExit(3)\n```\n"
    assert [b.skip for b in blocks(page)] == ["serves forever"]
    assert run_page("skip.md", page, tmp_path).returncode == 0


def test_namespaces_are_fresh_unless_the_page_shares(tmp_path: Path) -> None:
    page = "```python\nx = 1\n```\n\n```python\nprint(x)\n```\n"
    assert run_page("fresh.md", page, tmp_path).returncode == 1
    assert run_page("shared.md", SHARED + "\n" + page, tmp_path).returncode == 0


def test_other_languages_are_not_run() -> None:
    assert blocks("```bash\nexit 1\n```\n```\nplain\n```\n") == []
