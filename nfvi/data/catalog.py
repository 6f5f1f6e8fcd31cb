"""``nfvi data list | fetch | import``: where each dataset is looked for, and getting its files.

``import`` copies a file the user already has into the data dir (offline machines), ``fetch``
downloads it from its public home; both verify it with the dataset's own reader before it
replaces anything (written atomically: a temporary file, then a rename) and record its sha256
(:mod:`nfvi.data.store`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nfvi.data import frey
from nfvi.data.mnist import find_idx_files
from nfvi.data.store import record, sha256
from nfvi.errors import DataError
from nfvi.rundir import atomic_write_bytes


@dataclass
class Entry:
    """One dataset: its files, where they go, how to check them, where they come from."""

    name: str
    files: str  # for messages
    find: Callable[[Path], Path | None]
    target: Callable[[Path], Path] | None = None  # where import/fetch put the file
    verify: Callable[[Path], object] | None = None  # raises DataError unless the real layout
    url: str | None = None
    home: str = ""


def _find_idx(name: str) -> Callable[[Path], Path | None]:
    def find(data_dir: Path) -> Path | None:
        try:
            files = find_idx_files(name, data_dir)
        except DataError:
            return None
        return files["train_images"].parent if files else None

    return find


CATALOG: dict[str, Entry] = {
    "mnist": Entry("mnist", "4 IDX files", _find_idx("mnist"),
                   home="http://yann.lecun.com/exdb/mnist/ (dataset.download=true uses "
                        "torchvision's mirrors)"),
    "fashion_mnist": Entry("fashion_mnist", "4 IDX files", _find_idx("fashion_mnist"),
                           home="https://github.com/zalandoresearch/fashion-mnist"),
    "frey_faces": Entry("frey_faces", frey.FILE, frey.find_file,
                        target=lambda d: d / "frey_faces" / frey.FILE, verify=frey.read_frey,
                        url=frey.URL, home="https://cs.nyu.edu/~roweis/data.html"),
}


def entry(name: str) -> Entry:
    if name not in CATALOG:
        raise DataError(f"unknown dataset {name!r}; use one of {', '.join(CATALOG)}")
    return CATALOG[name]


def listing(data_dir: str | Path) -> list[dict[str, str]]:
    """One row per dataset: name, files, where found (or where looked), source."""
    d = Path(data_dir)
    rows = []
    for e in CATALOG.values():
        found = e.find(d)
        rows.append({"dataset": e.name, "files": e.files,
                     "status": "present" if found else "missing",
                     "where": str(found) if found else f"looked in {d}",
                     "source": e.url or e.home})
    return rows


def _install(e: Entry, src: Path, data_dir: Path, keep_src: bool) -> Path:
    """Verify ``src`` and move/copy it to the entry's target, atomically; record its digest."""
    if e.target is None or e.verify is None:
        raise DataError(f"nfvi data import/fetch does not handle {e.name}; put its {e.files} "
                        f"in {data_dir} ({e.home})")
    e.verify(src)  # DataError naming the file unless it is the published layout
    target = e.target(data_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, src.read_bytes())  # a temporary, then a rename; follows the umask
    if not keep_src:
        src.unlink(missing_ok=True)
    record(target, data_dir, sha256(target))
    return target


def import_file(name: str, path: str | Path, data_dir: str | Path) -> Path:
    """``nfvi data import NAME PATH``: a verified copy of ``path`` in the data dir."""
    e, src = entry(name), Path(path)
    if not src.is_file():
        raise DataError(f"{src} is not a file; give the path of {e.files} ({e.url or e.home})")
    return _install(e, src, Path(data_dir), keep_src=True)


def fetch(name: str, data_dir: str | Path, timeout: float = 60.0) -> Path:
    """``nfvi data fetch NAME``: download from the public home, verify, store."""
    e, d = entry(name), Path(data_dir)
    if e.url is None:
        raise DataError(f"nfvi data fetch does not handle {name}; use dataset.download=true or "
                        f"put its {e.files} in {d} ({e.home})")
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{name}.", suffix=".download")
    os.close(fd)
    try:
        try:
            with urllib.request.urlopen(e.url, timeout=timeout) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as ex:  # URLError, timeouts, refused connections are all OSErrors
            raise DataError(f"could not download {e.url} ({' '.join(str(ex).split())}); on a "
                            f"machine without network, get the file elsewhere and run nfvi "
                            f"data import {name} PATH") from ex
        return _install(e, Path(tmp), d, keep_src=False)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
