"""The quant mode as a value: parsed once where a request enters (CLI, API, meta.json).

Everything below the entry points asks the value (``mode.int8``, ``mode.float_type``) instead
of comparing strings, so a new mode is one line here plus the backends that declare it.
It is a ``str`` so meta.json, directory names and reports keep the seed's spellings.
"""

from __future__ import annotations

import enum

from mnv3.errors import UsageError


class QuantMode(str, enum.Enum):
    FLOAT32 = "force_float32"
    FLOAT16 = "force_float16"
    BFLOAT16 = "force_bfloat16"
    INT8_FLOAT16 = "qint8_mixed_float16"  # int8 where it helps, float16 elsewhere (the seed's)
    INT8_FLOAT32 = "qint8_mixed_float32"

    # the value everywhere text is made (f-strings, str()), as StrEnum does from Python 3.11
    __str__ = str.__str__
    __format__ = str.__format__

    @classmethod
    def parse(cls, mode: str | QuantMode) -> QuantMode:
        """The mode named ``mode``; the seed's ``forced_*`` spellings are accepted too."""
        if isinstance(mode, cls):
            return mode
        from mnv3.data.files import quote

        text = str(mode).strip().lower().replace("forced_", "force_", 1)
        try:
            return cls(text)
        except ValueError:
            raise UsageError(
                f"unknown quant mode {quote(mode)}; choose one of {', '.join(m.value for m in cls)}"
                " (the seed's 'forced_*' spellings are accepted)") from None

    @property
    def int8(self) -> bool:
        """Whether some layers run int8 (needs calibration images)."""
        return self in (QuantMode.INT8_FLOAT16, QuantMode.INT8_FLOAT32)

    @property
    def float_type(self) -> str:
        """The precision of the layers that do not run int8: float32, float16 or bfloat16."""
        return {QuantMode.FLOAT16: "float16", QuantMode.INT8_FLOAT16: "float16",
                QuantMode.BFLOAT16: "bfloat16"}.get(self, "float32")

    @property
    def is_reference(self) -> bool:
        """force_float32: what every other mode's accuracy budget is measured against."""
        return self is QuantMode.FLOAT32

    def without_int8(self) -> QuantMode:
        """The float mode this mode runs its non-int8 layers in (what a slower int8 falls back to)."""
        return {"float16": QuantMode.FLOAT16, "bfloat16": QuantMode.BFLOAT16}.get(
            self.float_type, QuantMode.FLOAT32)


# The seed's four modes (MagicMind's quant modes), in its order.
SEED_MODES = (QuantMode.FLOAT32, QuantMode.FLOAT16, QuantMode.INT8_FLOAT16, QuantMode.INT8_FLOAT32)
# What `mnv3 run` builds by default: the seed README's three table rows.
RUN_MODES = (QuantMode.FLOAT32, QuantMode.FLOAT16, QuantMode.INT8_FLOAT16)
