"""Every relative link in the docs and result notes resolves to a file in the repository, and none leaves it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "benchmarks" / "results").rglob("*.md")])
# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# Result files quoted in prose or code comments by their repository path.
RESULT_PATH = re.compile(r"benchmarks/results/[\w./-]*\.(?:md|json|png)")
EXTERNAL = ("http://", "https://", "mailto:")
PACKAGES = ("edge_agent", "central", "export", "benchmarks", "tests")  # the project's code, not .venv or build output


def _targets(md: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)  # code blocks hold no links
    return [t for t in LINK.findall(text) if not t.startswith(EXTERNAL) and not t.startswith("#")]


def _resolve(md: Path, target: str) -> Path:
    return (md.parent / target.split("#", 1)[0]).resolve()


def test_the_link_pattern_reads_plain_image_and_anchored_links(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("[a](b.md) ![c](d/e.png) [f](g.md#h) [i](https://x.org/j) [k](#l)\n```\n[m](n.md)\n```\n")
    assert _targets(md) == ["b.md", "d/e.png", "g.md#h"]


@pytest.mark.parametrize("md", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves_inside_the_repository(md):
    broken, outside = [], []
    for target in _targets(md):
        path = _resolve(md, target)
        if not path.is_relative_to(REPO):
            outside.append(target)
        elif not path.exists():
            broken.append(target)
    assert not outside, f"{md.relative_to(REPO)} links outside the repository: {outside}"
    assert not broken, f"{md.relative_to(REPO)} has broken links: {broken}"


def test_the_docs_name_no_path_outside_the_repository():
    for md in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        text = md.read_text(encoding="utf-8")
        for bad in ("../shared", "/work/"):
            assert bad not in text, f"{md.relative_to(REPO)} mentions {bad}"


def test_every_quoted_result_path_exists():
    code = (f for pkg in PACKAGES for f in (REPO / pkg).rglob("*.py"))
    sources = [*DOCS, *(f for f in code if f != Path(__file__).resolve())]
    missing = set()
    for f in sources:
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            if f.suffix == ".py" and " --" in line:
                continue  # a usage line may name the file its command is about to write
            missing.update(f"{f.relative_to(REPO)}: {p}" for p in RESULT_PATH.findall(line) if not (REPO / p).exists())
    assert not missing, "quoted result paths that do not exist:\n" + "\n".join(sorted(missing))
