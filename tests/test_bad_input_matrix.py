"""The CLI's bad-input matrix (cases in tests/bad_inputs.py; docs/reliability.md is generated from them).

Each case runs once per module (in-process, stories260K or tiny models saved to a scratch folder) and is
checked twice: the refusal (exit code, one stderr line naming the problem) and what it leaves in its
output folder (no complete-looking result). A case whose defect lives in a file this matrix may not change
is a strict xfail with the fix it needs, so fixing the defect turns it into a failure that asks for the
marker to go.
"""

from __future__ import annotations

import bad_inputs as bi
import pytest

pytestmark = pytest.mark.skipif(
    not (bi.STORIES / "config.json").exists(), reason="../shared/models/stories260K not present"
)

COMMANDS = {
    "eval",
    "ablate",
    "shapley",
    "similarity",
    "ila",
    "finetune",
    "export",
    "compare",
    "plot",
    "report",
    "prune",
    "prune-curve",
    "demo",
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> bi.Workspace:
    return bi.Workspace(tmp_path_factory.mktemp("bad_inputs"))


_outcomes: dict[tuple[str, str], tuple[bi.Outcome, object]] = {}


def outcome(case: bi.Case, ws: bi.Workspace):
    """Run each case once, whichever of its two tests asks first."""
    key = (str(ws.root), case.id)
    if key not in _outcomes:
        _outcomes[key] = bi.run_case(case, ws)
    return _outcomes[key]


def _params(known_defect):
    return [
        pytest.param(
            c, id=c.id, marks=[pytest.mark.xfail(reason=known_defect(c), strict=True)] if known_defect(c) else []
        )
        for c in bi.CASES
    ]


@pytest.mark.parametrize("case", _params(lambda c: c.xfail))
def test_refused_with_one_line(case, workspace):
    result, _ = outcome(case, workspace)
    assert result.crash is None, f"traceback instead of a one-line error:\n{result.stderr}"
    assert result.exit_code == case.exit_code, result.stderr
    if case.exit_code == 0:  # a documented fallback: it works and says nothing on stderr
        assert result.error_lines == [], result.stderr
        assert case.fragment.lower() in result.stdout.lower(), result.stdout
        return
    assert len(result.error_lines) == 1, f"expected one line on stderr:\n{result.stderr}"
    line = result.error_lines[0]
    assert line.startswith(f"layerscope {case.command}: error: "), line
    assert case.fragment.lower() in line.lower(), line


@pytest.mark.parametrize("case", _params(lambda c: c.leaves))
def test_no_result_left_behind(case, workspace):
    _, folder = outcome(case, workspace)
    assert bi.leftover_results(folder) == []


def test_case_table_is_sound():
    ids = [c.id for c in bi.CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(bi.CASES) >= 20
    assert {c.command for c in bi.CASES} == COMMANDS
    for c in bi.CASES:
        assert c.problem and c.fragment and "|" not in c.id


def test_reliability_doc_is_current():
    """docs/reliability.md lists exactly the table's cases; regenerate it when the table changes."""
    assert bi.DOC.exists(), f"docs/reliability.md missing: run {bi.GENERATOR}"
    text = bi.DOC.read_text(encoding="utf-8")
    assert bi.GENERATOR in text
    rows = bi.parse_doc(text)
    stale = f"docs/reliability.md is stale relative to tests/bad_inputs.py: run {bi.GENERATOR}"
    assert [(r["id"], r["command"], r["problem"]) for r in rows] == [
        (c.id, c.command, bi._cell(c.problem).replace("\\|", "|")) for c in bi.CASES
    ], stale
    for row, case in zip(rows, bi.CASES):
        assert case.fragment.lower() in row["message"].lower(), f"{case.id}: {stale}"
        if not case.xfail:  # the page shows what users read: one line, never a traceback
            assert "more lines on stderr" not in row["message"] and "(traceback)" not in row["message"], case.id
        if not case.xfail:  # a known defect's row shows what happens now (a traceback exits 1)
            assert row["exit_code"] == str(case.exit_code), f"{case.id}: {stale}"
        assert ("known defect" in row["message"]) == bool(case.xfail or case.leaves), f"{case.id}: {stale}"
    for i, note in enumerate(bi.known_defects(), 1):
        assert f"{i}. {note}" in text, stale
