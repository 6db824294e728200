"""The verification rule: how close an artifact's logits must be to PyTorch's, one rule per precision.

In the spirit of Optimum's ``OnnxConfig.ATOL_FOR_VALIDATION`` beside the I/O
spec, the rule travels with the artifact: the export writes the rules into
``manifest.json`` once (:func:`verification_entry`), and ``tsm-export verify``,
``--emulate`` and the device scripts read them from there instead of
restating numbers.  A check passes when

* ``max |logit - reference| <= max(absolute, r x max |reference logit|)``, with
  ``r = relative`` where the check runs on the export's CPU architecture and
  ``r = relative_other_machine`` elsewhere (another architecture, a GPU, qemu),
  where float32 sums run in another order; and
* where ``min_top1_agreement`` is set, at least that fraction of frames keep
  the reference's top-1 class.

float32 results differ only in the last bits, so its rule is tight; fp16
computes in half precision, so its rule is a few per cent of the largest logit
and every frame keeps its class; int8's rule is measured at export (what the
quantized model really gave, with slack for other CPUs' integer kernels).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class VerificationRule:
    """``max(absolute, relative x max |reference|)`` on logits, and optionally a top-1 agreement floor."""

    absolute: float
    relative: float
    relative_other_machine: float
    min_top1_agreement: float | None = None

    def tolerance(self, reference: np.ndarray, same_machine: bool = True) -> float:
        """Max abs diff allowed against ``reference`` (same CPU architecture as the export, or not)."""
        relative = self.relative if same_machine else self.relative_other_machine
        return float(max(self.absolute, relative * float(np.abs(np.asarray(reference)).max(initial=0.0))))

    def describe(self, same_machine: bool = True) -> str:
        """The rule in words, as the reports print it."""
        relative = self.relative if same_machine else self.relative_other_machine
        text = f"max({self.absolute:g}, {relative:g} x max |reference logit|)"
        if self.min_top1_agreement is not None:
            text += f", top-1 agreement >= {self.min_top1_agreement:.0%}"
        return text

    def check(self, actual: np.ndarray, reference: np.ndarray, same_machine: bool = True) -> dict[str, Any]:
        """Compare ``actual`` logits ``[frames, classes]`` with ``reference``: the figures and the verdict."""
        reference = np.asarray(reference)
        diff = max_abs_diff(actual, reference)
        tolerance = self.tolerance(reference, same_machine)
        agreement = top1_agreement(actual, reference)
        passed = diff <= tolerance and (self.min_top1_agreement is None or agreement >= self.min_top1_agreement)
        return {"passed": bool(passed), "max_abs_diff": diff, "tolerance": tolerance, "top1_agreement": agreement,
                "rule": self.describe(same_machine)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VerificationRule":
        """The rule as a manifest stores it; ValueError naming the field that is not a number."""
        data = {"relative_other_machine": data.get("relative"), **data}   # a rule written with one relative
        values = {}
        for key in ("absolute", "relative", "relative_other_machine"):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"verification rule field {key!r}: expected a non-negative number, got {value!r}")
            values[key] = float(value)
        floor = data.get("min_top1_agreement")
        if floor is not None and (isinstance(floor, bool) or not isinstance(floor, (int, float))
                                  or not 0.0 <= floor <= 1.0):
            raise ValueError(f"verification rule field 'min_top1_agreement': expected a fraction or null, got "
                             f"{floor!r}")
        return cls(min_top1_agreement=None if floor is None else float(floor), **values)


#: float32: 1e-4, or 1e-5 of the largest logit where the reference was computed; 1e-4 of it elsewhere.  PyTorch
#: on x86-64 against LLVM's aarch64 code (fused NEON multiply-adds, other summation order) differs by ~1e-5 of
#: the largest logit; a wrong buffer order or a broken kernel differs by order 1.
FP32 = VerificationRule(absolute=1e-4, relative=1e-5, relative_other_machine=1e-4)
#: fp16 (float16 compute, float32 accumulation and boundaries): measured at ~1 % of the largest logit on the
#: default model; 4 % where the export checked it, 5 % on another machine's half-precision kernels (TensorRT
#: --fp16 accumulates some sums in float16), and no frame may change its top-1 class.
FP16 = VerificationRule(absolute=1e-3, relative=0.04, relative_other_machine=0.05, min_top1_agreement=1.0)
RULES: dict[str, VerificationRule] = {"fp32": FP32, "fp16": FP16}

#: int8: the top-1 agreement with float32 (held-out clips) an export requires unless told otherwise.
DEFAULT_MIN_AGREEMENT = 0.98
#: int8 kernels round differently across CPUs (VNNI, AVX2 without it, ARM dot products): a re-run may move the
#: export's measured difference by this factor, and its agreement by one of the 16 verification frames.
INT8_DIFF_SLACK = 1.5
INT8_AGREEMENT_SLACK = 1 / 16


def measured_int8_rule(max_abs_diff_at_export: float, top1_agreement_at_export: float) -> VerificationRule:
    """int8's rule, from what the quantized model gave against float32 at export (its logits move by a lot more
    than float32 round-off, so a fixed rule would be either useless or failing)."""
    limit = INT8_DIFF_SLACK * float(max_abs_diff_at_export) + 1e-3
    return VerificationRule(absolute=limit, relative=0.0, relative_other_machine=0.0,
                            min_top1_agreement=max(0.0, float(top1_agreement_at_export) - INT8_AGREEMENT_SLACK))


def verification_entry(precision: str, extra_rules: Mapping[str, VerificationRule] | None = None) -> dict[str, Any]:
    """What the export writes into ``manifest.json["verification"]``: the artifact's precision and every rule.

    The fixed fp32 and fp16 rules are always written (a float32 ONNX model may become a TensorRT ``--fp16``
    engine on the device); ``extra_rules`` adds measured ones (int8).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    rules = {**RULES, **(extra_rules or {})}
    if precision not in rules:
        raise ValueError(f"no verification rule for precision {precision!r}: an int8 export writes a measured one")
    return {"precision": precision, "rules": {name: rule.to_dict() for name, rule in rules.items()}}


def max_abs_diff(actual: np.ndarray, reference: np.ndarray) -> float:
    """Max abs diff (inf on a shape mismatch or NaN, so a broken result never passes)."""
    actual, reference = np.asarray(actual), np.asarray(reference)
    if actual.shape != reference.shape:
        return float("inf")
    diff = float(np.abs(actual.astype(np.float64) - reference.astype(np.float64)).max(initial=0.0))
    return diff if np.isfinite(diff) else float("inf")


def top1_agreement(actual: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of frames whose top-1 class equals the reference's (0 on a shape mismatch)."""
    actual, reference = np.asarray(actual), np.asarray(reference)
    if actual.shape != reference.shape or actual.ndim != 2 or not len(actual):
        return 0.0
    return float(np.mean(actual.argmax(-1) == reference.argmax(-1)))
