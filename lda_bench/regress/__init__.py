"""The throughput regression gate: paired timing against a fixed workload (:mod:`.paired`),
verdicts (:mod:`.gate`) and the run from options to a decision (:func:`regress`)."""

from .session import GateResult, regress

__all__ = ["GateResult", "regress"]
