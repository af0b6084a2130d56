"""Search filters: which videos a query may return (folder, file name, modification dates).

One parser for the CLI flags, the Python API and the HTTP API, so all three accept the same
values and refuse bad ones with the same message. The catalog turns a filter into the sorted
ids of the clips it allows; the coarse search is restricted to those ids inside FAISS.
Torch-free: the serve client uses it too.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from mgvr.errors import UsageError

DATE_HELP = "a date YYYY-MM-DD or a local time YYYY-MM-DDTHH:MM[:SS]"


@dataclass(frozen=True)
class SearchFilter:
    under: str | None = None  # a folder (absolute, symlinks resolved, as the index stores paths)
    name: str | None = None  # a substring of the file name, case-insensitive
    modified_after: dt.datetime | None = None  # modified at or after this moment
    modified_before: dt.datetime | None = None  # modified before this moment

    @classmethod
    def parse(cls, under: str | os.PathLike | None = None, name: str | None = None,
              modified_after: str | dt.date | None = None,
              modified_before: str | dt.date | None = None) -> SearchFilter:
        """From user input: empty strings mean no condition; dates without a time mean the
        start of that day, in local time. Raises UsageError on a bad value."""
        folder = None
        if under is not None and str(under).strip():
            folder = str(Path(str(under).strip()).expanduser().resolve())
        text = name.strip() if isinstance(name, str) and name.strip() else None
        after = _moment(modified_after, "--modified-after")
        before = _moment(modified_before, "--modified-before")
        if after is not None and before is not None and after >= before:
            raise UsageError(f"--modified-after ({after:%Y-%m-%d %H:%M}) must be earlier than "
                             f"--modified-before ({before:%Y-%m-%d %H:%M})")
        return cls(folder, text, after, before)

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.under, self.name, self.modified_after,
                                           self.modified_before))

    def catalog_arguments(self) -> dict[str, object]:
        """Keyword arguments of Catalog.clip_ids_matching."""
        return {"under": self.under, "name": self.name,
                "modified_after_ns": _ns(self.modified_after),
                "modified_before_ns": _ns(self.modified_before)}

    def to_json(self) -> dict[str, str]:
        """The conditions set, as the search document's "filter" field."""
        values = {"under": self.under, "name": self.name,
                  "modified_after": self.modified_after and self.modified_after.isoformat(),
                  "modified_before": self.modified_before and self.modified_before.isoformat()}
        return {key: value for key, value in values.items() if value is not None}


def _moment(value: str | dt.date | None, flag: str) -> dt.datetime | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day)
    else:
        try:
            moment = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise UsageError(f"{flag}: '{value}' is not {DATE_HELP}") from None
    return moment if moment.tzinfo is not None else moment.astimezone()  # naive = local time


INT64 = (-(2**63), 2**63 - 1)  # what SQLite stores; nanoseconds reach only 1677 to 2262


def _ns(moment: dt.datetime | None) -> int | None:
    if moment is None:
        return None
    return max(INT64[0], min(INT64[1], int(moment.timestamp() * 1_000_000_000)))
