"""The one error type for bad input: it always names the file, the archive entry and the record."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    def __init__(self, file: str, reason: str, entry: str | None = None, record: str | None = None, raw: object = None):
        self.file, self.entry, self.record, self.reason = file, entry, record, reason
        self.raw = raw  # the offending record, kept for the rejects file
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file
        if self.entry is not None:
            where += f" :: entry {self.entry}"
        if self.record is not None:
            where += f" :: record {self.record}"
        return f"{where}: {self.reason}"

    def as_reject(self) -> dict:
        return {"file": self.file, "entry": self.entry, "record": self.record, "reason": self.reason, "raw": self.raw}


def require_regular_file(path: Path | str, key: str) -> None:
    """A pipe or a device (or a link to one) would be read without end: refused, naming the key."""
    if Path(path).exists() and not Path(path).is_file() and not Path(path).is_dir():
        raise InputError(str(path), f"is not a regular file (a pipe, a device or a link to one): {key} names a file")
