"""Tests that the README's pointers into the code stay true as the code moves.

A student reads the README first and follows its `file.py:line` and `file.py:first-last` references;
a reference that drifted by a few lines sends them to the wrong code. The FPDM/RPFM table's and the
reading order's references are checked against what each names (a line that must match a pattern;
a range must also end where its block ends), every reference against its file's length, and the file
table against the files on disk (every top-level file has its line).

Run: python -m pytest -q tests/test_readme.py
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
REF = re.compile(r"`([a-z_]+\.py):(\d+)(?:-(\d+))?`")  # file.py:line or file.py:first-last

# row of "What differs between FPDM and RPFM" -> what each of its references must point at, in order
ROW_TARGETS = {
    "generative process": [r"def make_process"],
    "training target": [r"prediction: str = option", r"def target"],
    "time convention": [r"def loss", r"def interpolate"],
    "time sampled in training": [r"t = torch\.randint", r"time_sampling: str = option"],
    "offset noise": [r"offset_noise: float = option"],
    "conditions": [r"def wants_fusion"],
    "stage 1": [r"def fusion_stage"],
    "default sampler, steps": [r"^DEFAULT_STEPS", r"^DEFAULT_STEPS"],
    "guidance": [r"^DEFAULT_GUIDANCE", r"^DEFAULT_GUIDANCE"],
    "NFE per image at release": [r"def guidance_branches"],
    "same in both": [r"def latent_stage", r"^SOURCE_POSE_DROP", r"^INDEPENDENT_DROP"],
}


def lines_of(name: str) -> list[str]:
    return (ROOT / name).read_text(encoding="utf-8").splitlines()


def difference_rows() -> dict:
    """{row name: [(file, line), ...]} of the README's FPDM/RPFM table."""
    section = README.split("## What differs between FPDM and RPFM", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] not in ("", "---"):
            rows[cells[0]] = [(f, int(n)) for f, n, _ in REF.findall(cells[3])]
    return rows


def test_the_difference_table_points_at_what_each_row_names():
    rows = difference_rows()
    assert set(rows) == set(ROW_TARGETS), f"rows changed: {sorted(set(rows) ^ set(ROW_TARGETS))}"
    wrong = []
    for row, refs in rows.items():
        assert len(refs) == len(ROW_TARGETS[row]), f"row {row!r}: {len(refs)} references"
        for (name, number), pattern in zip(refs, ROW_TARGETS[row]):
            text = lines_of(name)
            if not re.search(pattern, text[number - 1]):
                found = [i for i, t in enumerate(text, 1) if re.search(pattern, t)]
                wrong.append(f"row {row!r}: {name}:{number} is not /{pattern}/ (it is at {found})")
    assert not wrong, "\n".join(wrong)


def test_every_reference_is_inside_its_file():
    for name, first, last in REF.findall(README):
        assert (ROOT / name).is_file(), f"README names {name}, which does not exist"
        last = last or first
        assert 1 <= int(first) <= int(last) <= len(lines_of(name)), f"README: {name}:{first}-{last} is not inside the file"


# question of the reading order -> what each of its references starts at, in order
QUESTION_TARGETS = {
    1: [r"def make_process"],
    2: [r"def interpolate", r"def loss"],
    3: [r"cumulative\* form", r"def guidance_branches", r"^def nfe"],
    4: [r"class PoseEncoder", r"self\.pose_encoder\(pose\)", r"if model\.config\.source_colours",
        r"if self\.config\.source_colours", r"block\(h, emb, src_tokens\)", r"pool_source\(src_tokens\)"],
    5: [r"def source_enhanced_info_nce", r"def info_nce"],
    6: [r"class CountingModel", r"def warm_up"],
    7: [r"def detect_layout"],
    8: [r"def solver_step"],
}


def indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def ends_a_block(text: list[str], first: int, last: int) -> bool:
    """`last` is not blank and the next line that is not blank is no deeper than `first`: the range
    stops where a block stops, not halfway through a function nor after it."""
    after = next((t for t in text[last:] if t.strip()), "")
    return bool(text[last - 1].strip()) and indent(after) <= indent(text[first - 1])


def test_the_reading_order_points_at_what_each_question_names():
    section = README.split("## Reading order", 1)[1].split("\n## ", 1)[0]
    questions = re.split(r"^(\d)\. ", section, flags=re.M)[1:]  # [number, text, number, text, ...]
    refs = {int(n): REF.findall(text) for n, text in zip(questions[::2], questions[1::2])}
    assert set(refs) == set(QUESTION_TARGETS), f"questions changed: {sorted(set(refs) ^ set(QUESTION_TARGETS))}"
    wrong = []
    for q, found in refs.items():
        assert len(found) == len(QUESTION_TARGETS[q]), f"question {q}: {len(found)} references"
        for (name, first, last), pattern in zip(found, QUESTION_TARGETS[q]):
            text, first, last = lines_of(name), int(first), int(last or first)
            if not re.search(pattern, text[first - 1]):
                at = [i for i, t in enumerate(text, 1) if re.search(pattern, t)]
                wrong.append(f"question {q}: {name}:{first} is not /{pattern}/ (it is at {at})")
            elif last > first and not ends_a_block(text, first, last):
                wrong.append(f"question {q}: {name}:{first}-{last} stops inside a block")
    assert not wrong, "\n".join(wrong)


def test_every_top_level_file_has_its_line_in_the_file_table():
    table = README.split("## The files", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([^`]+)` \|", table, flags=re.M))
    on_disk = {p.name for p in ROOT.iterdir() if p.suffix in (".py", ".html")}
    assert on_disk <= listed, f"files without their line in the README's file table: {sorted(on_disk - listed)}"
    assert {n for n in listed if n.endswith((".py", ".html"))} <= on_disk, "the table names a file that is gone"
