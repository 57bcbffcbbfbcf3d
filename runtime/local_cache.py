"""What the runtime keeps per machine beside the bundles, under one folder: the optimized graphs of large CPU bundles
(`session.GraphCache`), the digests of bundle files it has already verified, and the load checks a bundle has passed.

A verified digest (or a passed check) is kept with the file's identity as `os.stat` gives it (device, inode, size, modification and
change times), the way git's index skips rehashing a file whose stat data is unchanged: any write to the file moves
its change time, which no ordinary process can set back. Whoever can write this folder can already replace the
optimized graphs the runtime opens, so the records add no new trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def cache_root() -> Path | None:
    """EDGEINFER_CACHE_DIR, else edgeinfer/ under $XDG_CACHE_HOME or ~/.cache (graphs/ and digests/ in it); None
    when EDGEINFER_GRAPH_CACHE is "0" (nothing is kept)."""
    if os.environ.get("EDGEINFER_GRAPH_CACHE", "1") == "0":
        return None
    if os.environ.get("EDGEINFER_CACHE_DIR"):
        return Path(os.environ["EDGEINFER_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeinfer"


def file_identity(path: Path) -> list[int]:
    """What changes whenever a file's bytes do: device, inode, size, modification and change times."""
    stat = path.stat()
    return [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def _record(kind: str, key: str) -> Path | None:
    root = cache_root()
    if root is None:
        return None
    return root / kind / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")


def _write(record: Path | None, data: dict) -> None:
    """Write a record whole (quietly nothing when the folder is not writable)."""
    if record is None:
        return
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=record.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, record)  # whole or not at all for a reader in another process
    except OSError:
        return


def known_digest(path: Path) -> str | None:
    """The sha256 recorded for `path` when the file is unchanged since it was verified, else None."""
    record = _record("digests", str(path.resolve()))
    try:
        kept = json.loads(record.read_text()) if record else None
        return kept["sha256"] if kept and kept["identity"] == file_identity(path) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember_digest(path: Path, digest: str) -> None:
    """Record that `path`, as it is now, has sha256 `digest`."""
    _write(_record("digests", str(path.resolve())), {"identity": file_identity(path), "sha256": digest})


def passed_before(check: str, key: str) -> bool:
    """Whether `check` passed for `key` (which must name everything the check reads, file identities included)."""
    record = _record(check, key)
    return bool(record and record.is_file())


def remember_pass(check: str, key: str) -> None:
    _write(_record(check, key), {"key": key})
