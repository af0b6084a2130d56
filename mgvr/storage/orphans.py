"""What a killed run leaves behind, and how to tell it from data: unregistered files.

Light on purpose (no numpy, FAISS or pyarrow unless an unregistered part must be looked
into): every `mgvr index` run starts here, including cron's runs with nothing to do.
"""

from __future__ import annotations

from pathlib import Path

from mgvr.storage.catalog import Catalog
from mgvr.storage.layout import IndexLayout


def _is_own_leftover(layout: IndexLayout, catalog: Catalog, path: Path) -> bool:
    """An unregistered Parquet part is deleted only when it provably never was committed: it
    was written for this catalog (its metadata says so) with a number the catalog never
    handed out. Anything else may be data of an earlier catalog: kept for `verify --repair`."""
    number = layout.file_number(path)
    if number is None or number < catalog.next_number("part"):
        return False
    from mgvr.storage.fine import read_part_metadata

    try:
        return read_part_metadata(path).get("catalog_id") == catalog.catalog_id()
    except (OSError, ValueError):
        return False  # a part gets its name only once whole: unreadable means damaged, kept


def unregistered_files(layout: IndexLayout, catalog: Catalog) -> tuple[list[Path], list[Path]]:
    """(orphans, foreign): files on disk the catalog does not name. Orphans are a killed run's
    leftovers, safe to delete: temporary files, segments (derived data, rebuilt from the
    parts), this catalog's uncommitted parts and their sidecars. Foreign files are parts of
    an earlier catalog, kept."""
    known = set(catalog.files())
    orphans, foreign = [], []
    unknown = [p for p in layout.data_files() if layout.relative(p) not in known]
    stems = {}
    for path in unknown:
        if path.name.endswith(".parquet"):
            stems[path.name.split(".", 1)[0]] = _is_own_leftover(layout, catalog, path)
    for path in unknown:
        if path.name.endswith(".tmp") or path.parent == layout.coarse_dir:
            orphans.append(path)
        elif stems.get(path.name.split(".", 1)[0], True):
            orphans.append(path)  # a sidecar without its Parquet part is a half-closed part
        else:
            foreign.append(path)
    orphans += sorted(layout.root.glob("*.tmp"))
    return orphans, foreign


def remove_orphans(layout: IndexLayout, catalog: Catalog) -> list[str]:
    """Delete what a killed run left behind (see unregistered_files)."""
    orphans, _ = unregistered_files(layout, catalog)
    for path in orphans:
        path.unlink(missing_ok=True)
    return [layout.relative(p) for p in orphans]


