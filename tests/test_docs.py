"""The documentation's references resolve: every relative link of the Markdown pages names a file
of the repository (and, with ``#anchor``, a heading of it), and every ``docs/<page>.md`` that the
code and configs cite exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
DOCS_REF = re.compile(r"\bdocs/[A-Za-z0-9_]+\.md\b")


def markdown_pages() -> list[Path]:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
             *sorted((REPO / "cluster").glob("*.md")),
             *sorted((REPO / "benchmarks").rglob("*.md"))]
    return [p for p in pages if p.is_file()]


def anchor_of(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def broken_links(page: Path, root: Path = REPO) -> list[str]:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold no links
    problems = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (http:, mailto:) or an anchor on the same page
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve()
        if not resolved.exists():
            problems.append(f"{page.relative_to(root)}: {target}: no such file")
        elif anchor and resolved.suffix == ".md":
            headings = re.findall(r"^#+\s+(.*)$", resolved.read_text(encoding="utf-8"), re.M)
            if anchor not in {anchor_of(h) for h in headings}:
                problems.append(f"{page.relative_to(root)}: {target}: no such heading")
    return problems


def test_anchor_of_matches_githubs_rule():
    assert anchor_of("Resume: the same run, continued exactly") == \
        "resume-the-same-run-continued-exactly"
    assert anchor_of("1.6 Per-iteration algorithm (CODE, order matters)") == \
        "16-per-iteration-algorithm-code-order-matters"


def test_broken_links_are_found(tmp_path):
    (tmp_path / "b.md").write_text("# Real heading\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md) [ok](b.md#real-heading) [web](https://x.org/y) [self](#top)\n"
                    "[gone](missing.md) [bad anchor](b.md#nope)\n```\n[in code](nothere.md)\n```\n")
    assert broken_links(page, root=tmp_path) == ["a.md: missing.md: no such file",
                                                 "a.md: b.md#nope: no such heading"]


def test_every_relative_link_of_the_docs_resolves():
    pages = markdown_pages()
    assert len(pages) > 10
    problems = [line for page in pages for line in broken_links(page)]
    assert not problems, "\n".join(problems)


def test_every_docs_page_the_code_cites_exists():
    cited: dict[str, list[str]] = {}
    for folder in ("tsal_dist", "runtime", "benchmarks", "cluster", "configs", "tests"):
        for f in (REPO / folder).rglob("*"):
            if f.suffix in {".py", ".yaml", ".yml", ".toml", ".sh"} and f.is_file():
                for ref in DOCS_REF.findall(f.read_text(encoding="utf-8", errors="replace")):
                    cited.setdefault(ref, []).append(str(f.relative_to(REPO)))
    assert "docs/method_notes.md" in cited
    missing = {ref: where for ref, where in cited.items() if not (REPO / ref).is_file()}
    assert not missing, missing
