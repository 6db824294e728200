"""Which export options a target row takes, checked against the row before any work starts.

In the spirit of Ultralytics' ``export_formats()``: each row of
:data:`~online_tsm.export.targets.TARGETS` lists the precisions and options it
accepts, and this one validator reads them, so a new row (LiteRT, Orin, a GPU)
says what it takes instead of adding a branch here.  Every refusal is one line
that names what the row does take.
"""
from __future__ import annotations

from dataclasses import dataclass

from online_tsm.errors import UserError
from online_tsm.export.targets import TARGETS, ExportTarget
from online_tsm.verification import DEFAULT_MIN_AGREEMENT, PRECISIONS

LIBRARY_CHOICES = ("auto", "so", "tar")
ORT_SHIFT_CHOICES = ("slice", "conv")


@dataclass(frozen=True)
class ExportOptions:
    """The options of one export request that depend on the row (the rest are the model's own)."""

    precision: str = "fp32"
    tune: int = 0
    library: str = "auto"
    calibration: str | None = None
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    ort_shift: str = "slice"
    tuning_records: bool = True


def rows_taking(precision: str) -> list[str]:
    """Names of the rows that can be exported in ``precision``."""
    return [row.name for row in TARGETS if precision in row.precisions]


def check_options(row: ExportTarget, options: ExportOptions) -> None:
    """Refuse, in one line, an option ``row`` does not take or a value outside its choices."""
    _check_values(options)
    if options.precision not in row.precisions:
        hint = dict(row.precision_hints).get(options.precision)
        advice = hint.format(name=row.name) if hint else f"{row.name} takes {', '.join(row.precisions)}"
        raise UserError(f"--precision {options.precision} is for {', '.join(rows_taking(options.precision))}; "
                        f"{advice}")
    if options.calibration is not None and options.precision != "int8":
        raise UserError("--calibration is for --precision int8")
    if options.tune and "tune" not in row.options:
        raise UserError(f"--tune measures candidates on this machine, so it works for "
                        f"{' and '.join(r.name for r in TARGETS if 'tune' in r.options)} only (not {row.name})")
    if options.library != "auto" and "library" not in row.options:
        raise UserError(f"--library chooses how a TVM library is written; {row.name} has none (it takes "
                        f"--library auto)")


def _check_values(options: ExportOptions) -> None:
    if options.precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {options.precision!r}")
    if not 0.0 <= options.min_agreement <= 1.0:
        raise UserError(f"--min-agreement must be a fraction between 0 and 1, got {options.min_agreement}")
    if options.ort_shift not in ORT_SHIFT_CHOICES:
        raise UserError(f"ort_shift must be {' or '.join(ORT_SHIFT_CHOICES)}, got {options.ort_shift!r}")
    if options.library not in LIBRARY_CHOICES:
        raise UserError(f"library must be {', '.join(LIBRARY_CHOICES[:-1])} or {LIBRARY_CHOICES[-1]}, got "
                        f"{options.library!r}")
    if options.tune < 0:
        raise UserError(f"--tune must be >= 0, got {options.tune}")
    if options.tune and not options.tuning_records:
        raise UserError("--tune makes tuning records and --no-tuning-records ignores them: give one of the two")
