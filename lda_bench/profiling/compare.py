"""Case-by-case comparison of two profile reports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lda_bench.core.reports import load_report

# Environment fields that make timings of two reports not directly comparable when they differ.
ENV_FIELDS = ("device_name", "cpu_model", "threads", "torch", "cuda", "python")


@dataclass
class CaseComparison:
    id: str
    label: str
    upsampler: str
    backend: str | None
    a: dict[str, Any] | None
    b: dict[str, Any] | None

    @staticmethod
    def _median(record: dict[str, Any] | None) -> float | None:
        if not record or record.get("status") != "ok" or not record.get("latency_ms"):
            return None
        return record["latency_ms"]["median"]

    @property
    def a_ms(self) -> float | None:
        return self._median(self.a)

    @property
    def b_ms(self) -> float | None:
        return self._median(self.b)

    @property
    def ratio(self) -> float | None:
        """B / A latency: > 1 means B is slower."""
        if self.a_ms is None or self.b_ms is None or self.a_ms <= 0:
            return None
        return self.b_ms / self.a_ms

    @property
    def macs_changed(self) -> bool:
        return bool(self.a and self.b and self.a.get("macs") != self.b.get("macs"))

    @property
    def params_changed(self) -> bool:
        return bool(self.a and self.b and self.a.get("params") != self.b.get("params"))


def compare_reports(a: dict[str, Any], b: dict[str, Any]) -> list[CaseComparison]:
    """Match cases by id (order of A, then B-only cases)."""
    a_cases = {c["id"]: c for c in a.get("cases", [])}
    b_cases = {c["id"]: c for c in b.get("cases", [])}
    out = []
    for case_id in list(a_cases) + [i for i in b_cases if i not in a_cases]:
        rec = a_cases.get(case_id) or b_cases[case_id]
        out.append(CaseComparison(
            id=case_id,
            label=rec.get("label", ""),
            upsampler=rec.get("upsampler", ""),
            backend=(b_cases.get(case_id) or rec).get("backend"),
            a=a_cases.get(case_id),
            b=b_cases.get(case_id),
        ))
    return out


def environment_differences(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    env_a, env_b = a.get("env", {}), b.get("env", {})
    return [(k, env_a.get(k), env_b.get(k)) for k in ENV_FIELDS if env_a.get(k) != env_b.get(k)]


@dataclass
class Comparison:
    """Two profile reports matched case by case, and how their environments differ."""

    a: str
    b: str
    rows: list[CaseComparison]
    environment_differences: list[tuple[str, Any, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": self.a, "b": self.b,
            "environment_differences": [{"field": k, "a": va, "b": vb} for k, va, vb in self.environment_differences],
            "cases": [{"id": r.id, "a_ms": r.a_ms, "b_ms": r.b_ms, "ratio": r.ratio, "macs_changed": r.macs_changed,
                       "params_changed": r.params_changed} for r in self.rows],
        }


def compare_files(report_a: str | Path, report_b: str | Path) -> Comparison:
    """``lda-bench compare A.json B.json`` as a function: load both profile reports (a
    :class:`~lda_bench.core.reports.ReportError` for a bad file) and compare them."""
    a = load_report(report_a, kind="profile")
    b = load_report(report_b, kind="profile")
    return Comparison(str(report_a), str(report_b), compare_reports(a, b), environment_differences(a, b))
