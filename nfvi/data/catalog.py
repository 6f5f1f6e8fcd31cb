"""``nfvi data list | fetch | import``: where each dataset is looked for, and getting its files.

``import`` copies a file the user already has into the data dir (offline machines), ``fetch``
downloads it from its public home; both verify it with the dataset's own reader before it
replaces anything (written atomically: a temporary file, then a rename) and record its sha256
(:mod:`nfvi.data.store`). A dataset of several files (static MNIST's three ``.amat`` files) has
``parts``: ``import`` takes the directory holding them (or some of the files, by their
published names), ``fetch`` downloads them all; every file is verified before any is stored.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nfvi.data import caltech, cifar_patches, frey, omniglot, static_mnist
from nfvi.data.mnist import find_idx_files
from nfvi.data.store import record, sha256
from nfvi.errors import DataError
from nfvi.rundir import atomic_write_bytes


@dataclass
class Part:
    """One file of a multi-file dataset: its published name, its URL, its check."""

    file: str
    url: str
    verify: Callable[[Path], object]  # raises DataError unless the real layout


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
    parts: tuple[Part, ...] = ()  # several files: each goes to <data_dir>/<name>/<file>


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
    static_mnist.NAME: Entry(
        static_mnist.NAME, "3 .amat files", static_mnist.find_dir, home=static_mnist.BASE_URL,
        parts=tuple(Part(f, static_mnist.url(s), lambda p, s=s: static_mnist.read_amat(p, s))
                    for s, f in static_mnist.FILES.items())),
}
for _m, _verify in ((omniglot, omniglot.read_chardata), (caltech, caltech.read_silhouettes),
                    (cifar_patches, cifar_patches.read_cifar)):
    CATALOG[_m.NAME] = Entry(_m.NAME, _m.FILE, _m.find,
                             target=lambda d, m=_m: d / m.NAME / m.FILE,
                             verify=_verify, url=_m.URL, home=_m.HOME)
del _m, _verify


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


def import_file(name: str, path: str | Path | Sequence[str | Path], data_dir: str | Path) -> Path:
    """``nfvi data import NAME PATH``: a verified copy of ``path`` in the data dir. For a
    dataset of several files, ``path`` is the directory holding them or one or more of the
    files (by their published names); returns the dataset's folder then."""
    e, d = entry(name), Path(data_dir)
    paths = [Path(p) for p in ([path] if isinstance(path, str | Path) else path)]
    if e.parts:
        pairs = _match_parts(e, paths)
        _install_parts(e, pairs, d, keep_src=True)
        return d / e.name
    if len(paths) != 1 or not paths[0].is_file():
        raise DataError(f"{' '.join(map(str, paths))} is not a file; give the path of "
                        f"{e.files} ({e.url or e.home})")
    return _install(e, paths[0], d, keep_src=True)


def _match_parts(e: Entry, paths: list[Path]) -> list[tuple[Part, Path]]:
    """Which given file is which part: a directory must hold all of them; files are matched
    by their published names."""
    by_file = {p.file: p for p in e.parts}
    names = ", ".join(by_file)
    if len(paths) == 1 and paths[0].is_dir():
        missing = [f for f in by_file if not (paths[0] / f).is_file()]
        if missing:
            raise DataError(f"{paths[0]} lacks {', '.join(missing)}; give the directory "
                            f"holding all of {names}, or the files ({e.home})")
        return [(p, paths[0] / p.file) for p in e.parts]
    pairs = []
    for src in paths:
        if not src.is_file() or src.name not in by_file:
            raise DataError(f"{src} is not one of {e.name}'s files ({names}); give the "
                            f"directory holding them or the files under these names ({e.home})")
        pairs.append((by_file[src.name], src))
    return pairs


def _install_parts(e: Entry, pairs: list[tuple[Part, Path]], data_dir: Path,
                   keep_src: bool) -> None:
    """Verify every file, then store each in ``<data_dir>/<name>/`` (atomically; digests
    recorded). Nothing is stored unless all of them pass."""
    for part, src in pairs:
        part.verify(src)
    for part, src in pairs:
        target = data_dir / e.name / part.file
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, src.read_bytes())
        if not keep_src:
            src.unlink(missing_ok=True)
        record(target, data_dir, sha256(target))


def _download(name: str, url: str, data_dir: Path, timeout: float) -> Path:
    """``url`` into a temporary file in ``data_dir``; one-line DataError when it fails."""
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=f".{name}.", suffix=".download")
    os.close(fd)
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as ex:  # URLError, timeouts, refused connections are all OSErrors
            raise DataError(f"could not download {url} ({' '.join(str(ex).split())}); on a "
                            f"machine without network, get the file elsewhere and run nfvi "
                            f"data import {name} PATH") from ex
    except BaseException:  # nothing half-downloaded stays behind
        os.unlink(tmp)
        raise
    return Path(tmp)


def fetch(name: str, data_dir: str | Path, timeout: float = 60.0) -> Path:
    """``nfvi data fetch NAME``: download from the public home, verify, store."""
    e, d = entry(name), Path(data_dir)
    if e.url is None and not e.parts:
        raise DataError(f"nfvi data fetch does not handle {name}; use dataset.download=true or "
                        f"put its {e.files} in {d} ({e.home})")
    d.mkdir(parents=True, exist_ok=True)
    done: list[Path] = []
    try:
        if not e.parts:
            done.append(_download(name, e.url, d, timeout))
            return _install(e, done[0], d, keep_src=False)
        pairs = []
        for part in e.parts:
            done.append(_download(name, part.url, d, timeout))
            pairs.append((part, done[-1]))
        _install_parts(e, pairs, d, keep_src=False)
        return d / e.name
    finally:
        for tmp in done:
            if tmp.exists():
                tmp.unlink()
