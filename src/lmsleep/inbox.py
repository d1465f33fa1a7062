"""The inbox: where the day's memories land, a local folder or an `s3://` prefix, reached through fsspec.

Files are never deleted: once a night's data is safely written, each file it came from is moved to
`<inbox>/consumed/<night-id>/`, so the next listing skips it and a person can still find every byte it held.
For S3, the endpoint comes from `AWS_ENDPOINT_URL` (honoured by s3fs), e.g. a local moto_server in tests.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import fsspec

CONSUMED_DIR = "consumed"


@dataclass(frozen=True)
class Inbox:
    url: str

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        fs, _ = fsspec.core.url_to_fs(self.url)
        return fs

    @property
    def root(self) -> str:
        _, path = fsspec.core.url_to_fs(self.url)
        return path.rstrip("/")

    def uri(self, path: str) -> str:
        """A full URI for a path inside this inbox (what provenance records)."""
        protocol = self.fs.protocol
        protocol = protocol[0] if isinstance(protocol, (tuple, list)) else protocol
        return path if protocol in ("file", "local") else f"{protocol}://{path}"

    def pending(self, pattern: str) -> list[str]:
        """Files waiting in the inbox (not yet consumed), sorted so every night reads them in the same order."""
        fs = self.fs
        if not fs.exists(self.root):
            return []
        fs.invalidate_cache()
        found = []
        for path in fs.find(self.root):
            relative = path[len(self.root) :].lstrip("/")
            parts = relative.split("/")
            if parts[0] == CONSUMED_DIR or any(part.startswith(".") for part in parts):
                continue
            if fnmatch.fnmatch(parts[-1], pattern):
                found.append(path)
        return sorted(found)

    def read(self, path: str) -> bytes:
        with self.fs.open(path, "rb") as handle:
            return handle.read()

    def consumed_path(self, path: str, night: str) -> str:
        relative = path[len(self.root) :].lstrip("/")
        return f"{self.root}/{CONSUMED_DIR}/{night}/{relative}"

    def mark_consumed(self, path: str, night: str) -> str:
        """Move a file under consumed/<night>/ (copy then delete on S3); returns where it went."""
        target = self.consumed_path(path, night)
        fs = self.fs
        parent = target.rsplit("/", 1)[0]
        fs.makedirs(parent, exist_ok=True)
        fs.mv(path, target)
        return target

    def consumed(self, night: str) -> list[str]:
        fs = self.fs
        folder = f"{self.root}/{CONSUMED_DIR}/{night}"
        fs.invalidate_cache()
        return sorted(fs.find(folder)) if fs.exists(folder) else []
