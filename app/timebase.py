"""A request's clock: hours since admission, or ISO-8601 date-times with an offset.

A request uses one kind of time. With date-times, hour 0 is `admitted_at` when given,
else the earliest observation, and times going back out (attention bins) are written
in the UTC offset of the request's first time, so a client reads them in its own clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Literal

__all__ = ["MAX_HOURS", "TimeKind", "Timebase", "parse_time"]

# The longest stay a request may describe: ten years. Far beyond any ICU stay, but it keeps
# grid arithmetic (bins as int64, date-times before year 10000) away from overflow.
MAX_HOURS = 24.0 * 365 * 10
# Date-times outside these years are entry errors, not patients.
_YEARS = (1900, 2200)

TimeKind = Literal["hours", "iso"]


def parse_time(value: object, what: str = "time") -> float | datetime:
    """One request time -> hours (float) or an offset-aware datetime.

    Raises ValueError with a message naming the problem: booleans, NaN/Infinity, negative
    or absurd hours, strings that are not ISO-8601 date-times, date-times without offset.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what} must be hours (a number) or an ISO-8601 date-time, not {value}")
    if isinstance(value, int | float):
        try:
            hours = float(value)
        except OverflowError:
            hours = float("inf")
        if hours != hours or hours in (float("inf"), float("-inf")):
            raise ValueError(f"{what} must be a finite number of hours")
        if hours < 0:
            raise ValueError(f"{what} {hours:g} is negative: hours since admission are >= 0")
        if hours > MAX_HOURS:
            raise ValueError(f"{what} {hours:g} h is beyond the {MAX_HOURS:g} h a stay may span")
        return hours
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"{what} {value[:40]!r} is neither hours (a number) nor an ISO-8601 date-time"
            ) from None
    else:
        raise ValueError(f"{what} must be hours (a number) or an ISO-8601 date-time")
    if isinstance(value, str) and _is_date_alone(value):
        raise ValueError(
            f"{what} {value[:40]!r} is a date alone, which does not say when in the day: "
            f"send a date-time with UTC offset, e.g. {moment.replace(tzinfo=UTC).isoformat()}"
        )
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(
            f"{what} {moment.isoformat()} has no UTC offset; add one, e.g. "
            f"{moment.replace(tzinfo=UTC).isoformat()}"
        )
    if not _YEARS[0] <= moment.year <= _YEARS[1]:
        raise ValueError(
            f"{what} {moment.isoformat()} is outside the years {_YEARS[0]}-{_YEARS[1]}")
    return moment


def _is_date_alone(text: str) -> bool:
    """"2026-11-20" (FHIR allows a date where a dateTime goes), which datetime reads as
    midnight without an offset."""
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Timebase:
    """How a request's times map to hours since admission, and back."""

    kind: TimeKind
    origin: datetime | None = None  # hour 0 of an ISO request
    zone: tzinfo | None = None  # offset of the request's first time, for times going out

    @classmethod
    def of(cls, times: Sequence[float | datetime], admitted_at: datetime | None) -> Timebase:
        """The timebase of a request whose times are all of one kind (checked before)."""
        moments = [t for t in times if isinstance(t, datetime)]
        if not moments:
            return cls("hours")
        origin = admitted_at if admitted_at is not None else min(moments)
        return cls("iso", origin, moments[0].tzinfo)

    def hours(self, time: float | datetime) -> float:
        """Hours since admission of one request time."""
        if isinstance(time, datetime):
            if self.origin is None:
                raise ValueError("a date-time in a request whose times are hours")
            return (time - self.origin).total_seconds() / 3600.0
        return float(time)

    def label(self, hours: float) -> float | str:
        """Hours since admission, written back in the request's own kind of time."""
        if self.kind == "hours" or self.origin is None:
            return hours
        moment = self.origin + timedelta(hours=hours)
        return moment.astimezone(self.zone).isoformat()
