"""Walks an AI Hub 71748 download, zipped or unzipped, and says what each JSON unit is.

A *unit* is one JSON document: a plain file, or one entry of a zip archive. Units are
classified by where they sit in the layout (see shared/aihub-format.md), never by
guessing from content, except for unknown label files which are sniffed.
"""

from __future__ import annotations

import os
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from ..errors import InputError

Kind = Literal["other", "sft", "rm", "label", "source", "ignored"]

SOURCE_FOLDER = "01.원천데이터"
LABEL_FOLDER = "02.라벨링데이터"
JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}


_OPEN_ARCHIVES: dict[str, zipfile.ZipFile] = {}  # per process: workers read many entries of one archive


def _archive(path: str) -> zipfile.ZipFile:
    if path not in _OPEN_ARCHIVES:
        _OPEN_ARCHIVES.clear()  # archives are walked one after another: keep one open
        _OPEN_ARCHIVES[path] = zipfile.ZipFile(path)
    return _OPEN_ARCHIVES[path]


@dataclass(frozen=True)
class Unit:
    """Picklable: it says where the bytes are, so worker processes can read units themselves."""

    file: str  # path of the plain file or the zip archive, relative to the download root
    entry: str | None  # entry name inside the archive, as stored (often with a leading slash)
    logical: PurePosixPath  # where the unit sits once unzipped: archive stem / entry
    kind: Kind
    subset: str  # Training | Validation | Other
    source: str  # absolute path of the plain file or of the archive
    member: int | None = None  # the entry's position in the archive's central directory

    @property
    def where(self) -> str:
        return self.file if self.entry is None else f"{self.file} :: {self.entry}"

    def read(self) -> bytes:
        if self.member is None:
            return Path(self.source).read_bytes()
        try:  # by its ZipInfo, not its name: an appended archive may hold two entries of one name
            archive = _archive(self.source)
            return archive.read(archive.infolist()[self.member])
        except Exception as exc:  # BadZipFile (CRC), zlib.error, EOFError from a damaged archive
            raise InputError(self.file, f"cannot decompress ({type(exc).__name__}: {exc})", entry=self.entry) from None


def _subset(parts: tuple[str, ...]) -> str:
    for part in parts:
        if part in ("Training", "Validation", "Other"):
            return part
        if part.startswith(("TL_", "TS_")):
            return "Training"
        if part.startswith(("VL", "VS")):
            return "Validation"
    return "Other"


def classify(logical: PurePosixPath) -> Kind:
    parts = logical.parts
    name = logical.name
    if name in JUNK_NAMES or name.startswith("._") or "__MACOSX" in parts:
        return "ignored"
    if SOURCE_FOLDER in parts:
        return "source"
    if name == "SFTlabel.json":
        return "sft"
    if name == "RMlabel.json":
        return "rm"
    if parts and parts[0] == "Other" or (len(parts) > 1 and parts[-2] == "Other"):
        return "other"
    if LABEL_FOLDER in parts:
        return "label"  # another TL_* archive: schema unknown, sniffed by the reader
    return "ignored"


def _entry_name(info: zipfile.ZipInfo) -> str:
    """Korean entry names written by Windows tools carry no UTF-8 flag and are cp949
    bytes; zipfile then decodes them as cp437. Undo that instead of transliterating."""
    name = info.filename
    if info.flag_bits & 0x800:
        return name
    try:
        return name.encode("cp437").decode("cp949")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return name


def _zip_units(root: Path, path: Path) -> Iterator[Unit | InputError]:
    rel = path.relative_to(root).as_posix()
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        yield InputError(rel, f"not a readable zip archive ({exc})")
        return
    stem = PurePosixPath(rel).with_suffix("")
    with archive:
        infos = [(position, info) for position, info in enumerate(archive.infolist()) if not info.is_dir()]
        if not infos:
            yield InputError(rel, "the archive holds no files")
        # Entries of the same name (an archive appended to) are all read; they are told apart as
        # "<name> [k of n]" in row origins and the report.
        copies = Counter(info.filename for _, info in infos)
        seen: Counter = Counter()
        for position, info in infos:
            name = _entry_name(info)
            logical = stem / name.lstrip("/")
            entry = name
            if copies[info.filename] > 1:
                seen[info.filename] += 1
                entry = f"{name} [{seen[info.filename]} of {copies[info.filename]}]"
            yield Unit(rel, entry, logical, classify(logical), _subset(logical.parts), str(path), position)


def iter_units(root: Path, shadowed: list[str]) -> Iterator[Unit | InputError]:
    """Every unit under `root` in a stable order. A folder next to a zip of the same name
    (an unzipped copy) is skipped and recorded in `shadowed`, so rows are not read twice.
    An unreadable archive comes out as an InputError in its place, so `skip` can go on."""
    root = Path(root)
    if root.is_file():
        raise InputError(str(root), "is a file, expected the AI Hub download folder (data.aihub_dir)")
    if not root.is_dir():
        raise InputError(str(root), "the AI Hub download folder does not exist (data.aihub_dir)")
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        zips = {Path(name).stem for name in filenames if name.lower().endswith(".zip")}
        for name in sorted(dirnames):
            if name in zips:
                shadowed.append((here / name).relative_to(root).as_posix())
        dirnames[:] = sorted(name for name in dirnames if name not in zips)
        for name in sorted(filenames):
            path = here / name
            if not path.is_file():  # a FIFO, a device, a link to one: reading it would never end
                rel = path.relative_to(root).as_posix()
                yield InputError(rel, "is not a regular file (a pipe, a device or a link to one): remove it")
                continue
            if name.lower().endswith(".zip"):
                yield from _zip_units(root, path)
                continue
            logical = PurePosixPath(path.relative_to(root).as_posix())
            yield Unit(logical.as_posix(), None, logical, classify(logical), _subset(logical.parts), str(path))
