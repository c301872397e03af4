"""Mixed precision for the trainers: the former home of `Precision` and `resolve`, kept importable here.

The rule (which autocast dtype, whether a gradient scaler is needed, the frozen networks' dtype) lives in
`latentsync.devices`: `resolve` is `devices.resolve_precision`.
"""

from __future__ import annotations

from ..devices import Precision
from ..devices import resolve_precision as resolve

__all__ = ["Precision", "resolve"]
