"""Every citation of docs/theory.md in the repository names a section that exists.

Code and documents cite the theory page as ``theory.md §3``, ``theory.md §3.4``, lists such as
``theory.md §1, §3`` or ``§1 and §3``, ranges such as ``§1–3``, and (in prose) the bare form
``theory §6``. The § numbers that follow a mention of the page in the same sentence (same
parenthesis, no other document named in between) are its citations. Each must be a heading
``## §N …`` / ``### §N.M …`` of ``docs/theory.md``, and those headings must be numbered
uniquely and consistently. Standard library and pytest only.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THEORY = ROOT / "docs" / "theory.md"
SCAN_DIRS = ("python", "cpp", "docs", "tests", "bench", "examples")
SUFFIXES = {".py", ".pyi", ".cpp", ".hpp", ".h", ".md", ".cmake"}
SKIP_DIRS = {"__pycache__", "build", "_build", "dist", "node_modules", "_skbuild"}
TOP_LEVEL = range(1, 7)  # §1 … §6: the topics every existing citation relies on

_NUM = r"\d+(?:\.\d+)*"
# A § reference, optionally a range: §3, §3.4, §1–3, §1 – §3, §3.1-3.4 (en/em dash or hyphen).
_SECTION = re.compile(rf"§+\s*({_NUM})(?:\s*[–—-]\s*§?\s*({_NUM}))?")
# A mention of the theory page: "theory.md" (any path prefix), or the bare word right before a §.
_MENTION = re.compile(r"theory\.md|\btheory\b(?=`?\s*§)", re.IGNORECASE)
# Where a citation's span stops: the end of a sentence (not e.g./i.e./cf./vs.), a table cell.
_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\bcf)(?<!\bvs)[.!?](?=\s|$)|\|")
# Another document named after the mention: its § numbers are its own.
_OTHER_DOC = re.compile(r"[\w./-]*\.(?:md|rst|txt|py|pyi|cpp|hpp|h)\b")
# A quoted section title right after the number: theory.md §3, "Trajectory mode".
_QUOTED_TITLE = re.compile(r"^\s*,?\s*[\"“]([^\"”]{3,80})[\"”]")
_HEADING = re.compile(r"^(#{1,6})\s+§\s*(\S*)")
_MAX_SPAN = 300

_COMMENT = {
    ".py": r"#+",
    ".pyi": r"#+",
    ".cmake": r"#+",
    ".cpp": r"//+!?|/\*+|\*+(?!/)",
    ".hpp": r"//+!?|/\*+|\*+(?!/)",
    ".h": r"//+!?|/\*+|\*+(?!/)",
    ".md": r">+",
}
_BLOCK_START = re.compile(r"(?:[-*+]\s|\d+[.)]\s|#|\||```|\.\.\s)")


@dataclass(frozen=True)
class Citation:
    path: str  # relative to the repository root
    line: int  # 1-based line of the § number
    section: str  # "3", "3.4"
    title: str | None = None  # a quoted title that follows the number, if any

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _span(text: str, start: int, suffix: str) -> tuple[str, list[int]]:
    """The text after a mention, joined across continuation lines (comment markers removed),
    with the source offset of every character; stops at a blank line or a new block."""
    marker = re.compile(rf"^\s*(?:{_COMMENT.get(suffix, '(?!)')})?\s?")
    out: list[str] = []
    offsets: list[int] = []
    pos = start
    first = True
    while pos < len(text) and len(out) < _MAX_SPAN:
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        line = text[pos:end]
        skip = 0
        if not first:
            skip = marker.match(line).end()
            rest = line[skip:]
            if not rest.strip() or _BLOCK_START.match(rest.lstrip()):
                break
            out.append(" ")
            offsets.append(pos)
        for i, ch in enumerate(line[skip:], start=pos + skip):
            out.append(ch)
            offsets.append(i)
        first = False
        pos = end + 1
    return "".join(out)[:_MAX_SPAN], offsets[:_MAX_SPAN]


def _cut(span: str) -> str:
    """The part of a span that belongs to the mention: up to the end of its sentence, the
    parenthesis that encloses it, or the next document named."""
    stop = len(span)
    for rx in (_SENTENCE_END, _OTHER_DOC):
        m = rx.search(span)
        if m:
            stop = min(stop, m.start())
    depth = 0
    for i, ch in enumerate(span[:stop]):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                return span[:i]
    return span[:stop]


def _expand(lo: str, hi: str | None) -> list[str]:
    """§a–b as the sections it names: every integer between two top-level numbers, every
    subsection between two of the same parent, else the two ends."""
    if hi is None:
        return [lo]
    a, b = lo.split("."), hi.split(".")
    if len(a) == len(b) and a[:-1] == b[:-1] and int(a[-1]) <= int(b[-1]):
        return [".".join([*a[:-1], str(k)]) for k in range(int(a[-1]), int(b[-1]) + 1)]
    return [lo, hi]


def parse_citations(text: str, path: str = "<text>", suffix: str = ".md") -> list[Citation]:
    """All theory.md citations in ``text`` (a whole file)."""
    found: dict[tuple[int, str, str | None], Citation] = {}
    for mention in _MENTION.finditer(text):
        span, offsets = _span(text, mention.end(), suffix)
        kept = _cut(span)
        for m in _SECTION.finditer(kept):
            title_m = _QUOTED_TITLE.match(span[m.end() :])
            title = title_m.group(1).strip() if title_m else None
            line = _line_of(text, offsets[m.start()])
            for section in _expand(m.group(1), m.group(2)):
                found.setdefault((line, section, title), Citation(path, line, section, title))
    return sorted(found.values(), key=lambda c: (c.line, c.section))


def _scanned_files() -> list[Path]:
    me = Path(__file__).resolve()
    files = [ROOT / "README.md"] if (ROOT / "README.md").is_file() else []
    for top in SCAN_DIRS:
        base = ROOT / top
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*")):
            rel = p.relative_to(ROOT).parts
            if any(part in SKIP_DIRS or part.startswith(".") for part in rel[:-1]):
                continue
            if p.is_file() and p.suffix in SUFFIXES and p.resolve() != me:
                files.append(p)
    return files


def _headings(text: str) -> list[tuple[int, int, str, str]]:
    """(line, level, number, heading text) of every ``#… §number …`` heading."""
    out = []
    fence = False
    for i, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fence = not fence
        if fence:
            continue
        m = _HEADING.match(line)
        if m:
            out.append((i, len(m.group(1)), m.group(2), line))
    return out


@pytest.fixture(scope="module")
def theory_text() -> str:
    assert THEORY.is_file(), f"{THEORY} is missing: the code cites it"
    return THEORY.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def sections(theory_text: str) -> dict[str, str]:
    """Section number -> its heading line."""
    return {num: line for _, _, num, line in _headings(theory_text)}


@pytest.fixture(scope="module")
def citations() -> list[Citation]:
    out: list[Citation] = []
    for p in _scanned_files():
        text = p.read_text(encoding="utf-8", errors="replace")
        out.extend(parse_citations(text, p.relative_to(ROOT).as_posix(), p.suffix))
    return out


# --------------------------------------------------------------------------------------------
# docs/theory.md's own numbering
# --------------------------------------------------------------------------------------------


def test_theory_headings_are_numbered_uniquely(theory_text: str) -> None:
    heads = _headings(theory_text)
    bad = [f"line {ln}: {text!r}" for ln, _, num, text in heads if not re.fullmatch(_NUM, num)]
    assert not bad, "malformed § headings (use '## §3 Title', '### §3.4 Title'):\n" + "\n".join(bad)
    counts = Counter(num for _, _, num, _ in heads)
    dup = sorted(num for num, k in counts.items() if k > 1)
    assert not dup, f"docs/theory.md numbers these sections more than once: {dup}"
    for ln, level, num, text in heads:
        depth = num.count(".") + 1
        assert level == depth + 1, (
            f"docs/theory.md line {ln}: §{num} is a depth-{depth} section and needs a "
            f"{'#' * (depth + 1)} heading, got {text!r}"
        )
        parent = num.rpartition(".")[0]
        assert not parent or parent in counts, (
            f"docs/theory.md line {ln}: §{num} has no parent section §{parent}"
        )


def test_theory_sections_are_consecutive(theory_text: str) -> None:
    nums = [num for _, _, num, _ in _headings(theory_text)]
    top = [int(n) for n in nums if "." not in n]
    assert top == list(TOP_LEVEL), f"top-level sections must be §1 … §6 in order, got {top}"
    children: dict[str, list[int]] = {}
    for n in nums:
        parent, _, last = n.rpartition(".")
        if parent:
            children.setdefault(parent, []).append(int(last))
    for parent, kids in children.items():
        assert kids == list(range(1, len(kids) + 1)), (
            f"the subsections of §{parent} must be numbered 1, 2, … in order, got {kids}"
        )


def test_theory_internal_references_resolve(theory_text: str, sections: dict[str, str]) -> None:
    bad = []
    for i, line in enumerate(theory_text.splitlines(), start=1):
        if _HEADING.match(line):
            continue
        for m in _SECTION.finditer(line):
            for num in _expand(m.group(1), m.group(2)):
                if num not in sections:
                    bad.append(f"docs/theory.md:{i} refers to §{num}")
    assert not bad, "references to missing sections:\n" + "\n".join(bad)


# --------------------------------------------------------------------------------------------
# The citations in the repository
# --------------------------------------------------------------------------------------------


def test_citations_are_found(citations: list[Citation]) -> None:
    # A guard for the scanner itself: the code base cites the page in many places.
    assert len(citations) >= 10, f"found only {len(citations)} theory.md citations: {citations}"


def test_every_citation_resolves(citations: list[Citation], sections: dict[str, str]) -> None:
    bad = [
        f"{c.where()} cites theory.md §{c.section}, which docs/theory.md does not have"
        for c in citations
        if c.section not in sections
    ]
    assert not bad, "unresolved citations:\n" + "\n".join(bad)


def test_quoted_titles_match_their_section(
    citations: list[Citation], theory_text: str, sections: dict[str, str]
) -> None:
    # "theory.md §3, "Trajectory mode"": the title must head §3 or one of its subsections.
    bad = []
    for c in citations:
        if c.title is None or c.section not in sections:
            continue
        heads = [
            text
            for num, text in sections.items()
            if num == c.section or num.startswith(c.section + ".")
        ]
        if not any(c.title.lower() in h.lower() for h in heads):
            bad.append(f"{c.where()} cites §{c.section} as {c.title!r}, not a heading there")
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "suffix", "expected"),
    [
        ("see theory.md §3.", ".md", ["3"]),
        ("(theory.md §3.4) and more", ".md", ["3.4"]),
        ("theory.md §1, §3 give it", ".md", ["1", "3"]),
        ("theory.md §1 and §3", ".md", ["1", "3"]),
        ("theory.md §1–3 predict it", ".md", ["1", "2", "3"]),
        ("theory.md §3.1-3.3 predict it", ".md", ["3.1", "3.2", "3.3"]),
        ("comes from `theory.md` §1 (gauges) and §6 (the step).", ".md", ["1", "6"]),
        ("theory §6's split form", ".md", ["6"]),
        ("the theory paper, §2 of ddc", ".md", []),
        ("(theory.md §6) and docs/ddc.md §5", ".md", ["6"]),
        ("theory.md §6, docs/ddc.md §5", ".md", ["6"]),
        ("(theory.md §4) is cited; (§2 conventions)", ".md", ["4"]),
        ("theory.md §3. The next sentence cites §5.", ".md", ["3"]),
        ("theory.md §2, e.g. §2.5 here", ".md", ["2", "2.5"]),
        ("# read it (theory.md §4,\n# §5) twice\n", ".py", ["4", "5"]),
        ("// kernels (theory.md §6,\n// docs/ddc.md §2)\n", ".cpp", ["6"]),
        ("theory.md §1\n\n§2 is another paragraph", ".md", ["1"]),
        ("theory.md §1\n- §2 is another item", ".md", ["1"]),
        ("| theory.md §1 | §2 |", ".md", ["1"]),
    ],
)
def test_parser_reads_the_citation_forms(text: str, suffix: str, expected: list[str]) -> None:
    assert [c.section for c in parse_citations(text, suffix=suffix)] == expected


def test_parser_reports_lines_and_titles() -> None:
    text = 'x = 1\n"""Fit it (theory.md\n§3, "Trajectory mode")."""\n'
    (c,) = parse_citations(text, "m.py", ".py")
    assert (c.line, c.section, c.title) == (3, "3", "Trajectory mode")
