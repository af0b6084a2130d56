"""Where things live inside an index directory, and which directory is the index."""

from __future__ import annotations

import os
import re
from pathlib import Path

import platformdirs

from mgvr.config import CONFIG_FILENAME
from mgvr.errors import IndexNotFoundError

INDEX_ENV = "MGVR_INDEX"
_COARSE_NAME = re.compile(r"^coarse-(\d+)\.faiss$")


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
    def lock(self) -> Path:
        return self.root / "lock"

    def exists(self) -> bool:
        return self.config.is_file() and self.catalog.is_file()

    def require(self) -> IndexLayout:
        """This layout, or IndexNotFoundError when no index lives here."""
        if not self.exists():
            raise IndexNotFoundError(
                f"{self.root}: no mgvr index here; build one with `mgvr index FOLDER` "
                "or point --index / $MGVR_INDEX at an existing index")
        return self

    def coarse(self, generation: int) -> Path:
        return self.root / f"coarse-{generation:06d}.faiss"

    def next_generation(self, current: int) -> int:
        """A generation number above `current` and above every FAISS file on disk, so a file
        left by a killed run is never taken for a new generation's."""
        return max([current, *self.coarse_generations()]) + 1

    def coarse_generations(self) -> list[int]:
        if not self.root.is_dir():
            return []
        found = (_COARSE_NAME.match(p.name) for p in self.root.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def fine_part(self, name: str) -> Path:
        return self.fine_dir / name

    def fine_part_name(self, number: int) -> str:
        return f"part-{number:06d}.parquet"
