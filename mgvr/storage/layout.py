"""Where things live inside an index directory, and which directory is the index.

    mgvr.json                   IndexConfig
    catalog.sqlite              the catalog (storage.catalog)
    fine/part-NNNNNN.parquet    fine features, immutable (storage.fine)
    fine/part-NNNNNN.rows.npy   its memory-mapped sidecar
    coarse/seg-NNNNNN.faiss     coarse segments, immutable (storage.coarse)
    model/                      what search needs of a trained checkpoint, copied in
    lock                        single-writer lock
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

import platformdirs

from mgvr.config import CONFIG_FILENAME
from mgvr.errors import IndexDamagedError, IndexNotFoundError

INDEX_ENV = "MGVR_INDEX"
_NUMBERED = {"part": re.compile(r"^part-(\d+)\."), "segment": re.compile(r"^seg-(\d+)\.")}


def default_index_dir(explicit: str | os.PathLike | None = None) -> Path:
    """`--index PATH`, else $MGVR_INDEX, else the per-user data directory."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(INDEX_ENV):
        return Path(os.environ[INDEX_ENV]).expanduser()
    return Path(platformdirs.user_data_dir("mgvr")) / "index"


class IndexLayout:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILENAME

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.sqlite"

    @property
    def fine_dir(self) -> Path:
        return self.root / "fine"

    @property
    def coarse_dir(self) -> Path:
        return self.root / "coarse"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    def data_files(self) -> list[Path]:
        """Parts, sidecars and segments on disk, registered or not."""
        return sorted(p for folder in (self.fine_dir, self.coarse_dir) if folder.is_dir()
                      for p in folder.iterdir() if p.is_file())

    def exists(self) -> bool:
        """Something of an index is here: its config, its catalog or its data files."""
        return self.config.is_file() or self.catalog.exists() or bool(self.data_files())

    def never_committed(self) -> bool:
        """A new index whose first run stopped before it wrote mgvr.json (a run makes the
        catalog first, to log itself, and the config once the model is loaded): nothing was
        committed, so nothing can be damaged, and the next `mgvr index` starts it afresh."""
        from mgvr.storage.catalog import Catalog

        if self.config.exists() or not self.catalog.is_file():
            return False
        try:
            catalog = Catalog(self.catalog)
        except IndexDamagedError:
            return False
        try:
            return catalog.generation() == 0
        except sqlite3.DatabaseError:  # a catalog this damaged is for verify to report
            return False
        finally:
            catalog.close()

    def require(self) -> IndexLayout:
        """This layout, or IndexNotFoundError when no index lives here."""
        if not self.exists():
            raise IndexNotFoundError(
                f"{self.root}: no mgvr index here; build one with `mgvr index FOLDER` "
                "or point --index / $MGVR_INDEX at an existing index")
        if self.never_committed():
            raise IndexNotFoundError(
                f"{self.root}: no mgvr index here yet: its first `mgvr index` run has not "
                "committed anything (it is still going, or it was stopped); run `mgvr index "
                "FOLDER` again if it stopped")
        if not self.config.is_file():
            raise IndexDamagedError(f"{self.config}: missing beside the index's data; run "
                                    "`mgvr verify --repair` to rebuild it from the Parquet parts")
        return self

    def open_catalog(self):
        """The index's catalog; IndexDamagedError when it is missing or unreadable. Opening
        needs only read access (readers simply never write)."""
        from mgvr.storage.catalog import Catalog

        return Catalog(self.catalog)

    # numbered immutable files ------------------------------------------------------------------
    def part_name(self, number: int) -> str:
        return f"part-{number:06d}.parquet"

    def segment_name(self, number: int) -> str:
        return f"seg-{number:06d}.faiss"

    def fine_part(self, name: str) -> Path:
        return self.fine_dir / name

    def part_files(self, name: str) -> list[Path]:
        """A part's Parquet file and its sidecar."""
        from mgvr.storage.fine import sidecar_path

        path = self.fine_part(name)
        return [path, sidecar_path(path)]

    def segment(self, name: str) -> Path:
        return self.coarse_dir / name

    def numbered_files(self, kind: str) -> list[int]:
        """Numbers of the `kind` ('part' or 'segment') files on disk."""
        folder = self.fine_dir if kind == "part" else self.coarse_dir
        if not folder.is_dir():
            return []
        found = (_NUMBERED[kind].match(p.name) for p in folder.iterdir())
        return sorted({int(m.group(1)) for m in found if m})

    @staticmethod
    def file_number(path: Path) -> int | None:
        """The number in a part's or segment's file name."""
        for pattern in _NUMBERED.values():
            found = pattern.match(path.name)
            if found:
                return int(found.group(1))
        return None

    def relative(self, path: Path) -> str:
        """How the catalog names a file: its path relative to the index directory."""
        return path.relative_to(self.root).as_posix()
