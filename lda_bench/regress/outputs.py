"""What CI systems read from a gate run: a Markdown summary and JUnit XML.

* :func:`markdown_summary`: one table, regressions first, with the numbers and p-values, for
  ``$GITHUB_STEP_SUMMARY`` and merge-request comments;
* :func:`junit_xml`: one ``<testcase>`` per benchmark case; a regression is a ``<failure>``, a case
  the gate could not decide (not comparable, too noisy) is ``<skipped>``.

Both are written with :func:`lda_bench.core.reports.write_atomic`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any, Sequence

from .gate import FASTER, NOT_COMPARABLE, SAME, SLOWER, TOO_NOISY, CaseVerdict

# Regressions first, then what the gate could not decide, then the rest.
_ORDER = {SLOWER: 0, NOT_COMPARABLE: 1, TOO_NOISY: 2, FASTER: 3, SAME: 4}
_HEADLINE = {0: "no regression", 1: "regression detected", 2: "undecided: not comparable or too noisy",
             3: "set-up error"}


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _ordered(verdicts: Sequence[CaseVerdict]) -> list[CaseVerdict]:
    return sorted(verdicts, key=lambda v: _ORDER.get(v.verdict, 5))


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_summary(verdicts: Sequence[CaseVerdict], exit_code: int, title: str, base_label: str,
                     now_label: str, reasons: Sequence[str] = ()) -> str:
    """The gate's verdicts as Markdown: a headline, one table (regressions first), the reasons."""
    lines = [f"### {_md_cell(title)}", "", f"**{_HEADLINE.get(exit_code, f'exit {exit_code}')}** "
             f"({sum(v.verdict == SLOWER for v in verdicts)} slower, {sum(v.verdict == FASTER for v in verdicts)} "
             f"faster, {len(verdicts)} cases)", "",
             f"| step | upsampler | backend | {base_label} ms | {now_label} ms | change | 95% CI | p | verdict | why |",
             "|---|---|---|---:|---:|---:|---|---:|---|---|"]
    for v in _ordered(verdicts):
        interval = "-" if v.ci_low is None or v.ci_high is None else f"{v.ci_low:.2f}-{v.ci_high:.2f}"
        verdict = f"**{v.verdict}**" if v.verdict == SLOWER else v.verdict
        lines.append(f"| {_md_cell(v.label)} | {_md_cell(v.upsampler)} | {v.backend or '-'} | "
                     f"{_num(v.baseline_ms, '.3g')} | {_num(v.current_ms, '.3g')} | "
                     f"{'-' if v.change is None else f'x{v.change:.2f}'} | {interval} | {_num(v.p_value, '.1e')} | "
                     f"{verdict} | {_md_cell(v.reason)} |")
    notes = [f"{v.id}: {note}" for v in verdicts for note in v.notes]
    if reasons or notes:
        lines.append("")
        lines += [f"- {_md_cell(r)}" for r in reasons]
        lines += [f"- note: {_md_cell(n)}" for n in notes]
    return "\n".join(lines) + "\n"


def junit_xml(verdicts: Sequence[CaseVerdict], suite_name: str, timings: dict[str, float] | None = None) -> str:
    """JUnit XML: one test case per benchmark case (``timings``: seconds spent per case id)."""
    timings = timings or {}
    suite = ET.Element("testsuite", {
        "name": f"lda-bench regress {suite_name}",
        "tests": str(len(verdicts)),
        "failures": str(sum(v.verdict == SLOWER for v in verdicts)),
        "errors": "0",
        "skipped": str(sum(v.verdict in (NOT_COMPARABLE, TOO_NOISY) for v in verdicts)),
        "time": f"{sum(timings.values()):.3f}",
    })
    for v in verdicts:
        case = ET.SubElement(suite, "testcase", {"classname": f"lda-bench.regress.{suite_name}",
                                                "name": v.id, "time": f"{timings.get(v.id, 0.0):.3f}"})
        if v.verdict == SLOWER:
            failure = ET.SubElement(case, "failure", {"message": f"slower: {v.reason}", "type": "regression"})
            failure.text = _details(v)
        elif v.verdict in (NOT_COMPARABLE, TOO_NOISY):
            ET.SubElement(case, "skipped", {"message": f"{v.verdict}: {v.reason}"})
        out = ET.SubElement(case, "system-out")
        out.text = _details(v)
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def _details(v: CaseVerdict) -> str:
    fields: dict[str, Any] = {"verdict": v.verdict, "change": v.change, "ci": (v.ci_low, v.ci_high),
                              "p": v.p_value, "base_ms": v.baseline_ms, "now_ms": v.current_ms, "why": v.reason}
    return "; ".join(f"{k}={val}" for k, val in fields.items()) + "".join(f"\nnote: {n}" for n in v.notes)
