"""Files of the Files API: metadata in the database, content on disk under one directory.

Content is written to a temporary name in the same directory and renamed into place, so a file
row never points at a half-written file; files are created with mode 0600 under a 0700
directory. Every look-up takes the owner: another user's id is "not found", never "forbidden",
so ids do not leak (https://platform.openai.com/docs/api-reference/files).
"""

from __future__ import annotations

import asyncio
import builtins
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import delete, select

from gateway.store.database import Database
from gateway.store.models import StoredFile, utcnow

__all__ = ["FileInfo", "FileStore", "new_file_id"]

PURPOSES = ("batch", "batch_output")


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class FileInfo:
    id: str
    owner: str
    purpose: str
    filename: str
    bytes: int
    created_at: datetime
    path: str

    @classmethod
    def of(cls, row: StoredFile) -> FileInfo:
        return cls(row.id, row.owner, row.purpose, row.filename, row.bytes, row.created_at, row.path)

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": int(self.created_at.timestamp()),
            "expires_at": None,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


class FileStore:
    def __init__(self, db: Database, directory: str | Path) -> None:
        self._db = db
        self.root = Path(directory)

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    def local_path(self, info: FileInfo) -> Path:
        return self.root / info.path

    async def add_stream(
        self,
        owner: str,
        purpose: str,
        filename: str,
        source: IO[bytes],
        *,
        max_bytes: int,
        file_id: str | None = None,
    ) -> FileInfo:
        """Copy ``source`` in; ``ValueError`` if it is larger than ``max_bytes`` (nothing is kept)."""
        self._prepare()
        file_id = file_id or new_file_id()
        rel = f"{file_id}.jsonl"
        size = await asyncio.to_thread(_write_stream, self.root / rel, source, max_bytes)
        return await self._insert(file_id, owner, purpose, filename, size, rel)

    async def add_lines(
        self, owner: str, purpose: str, filename: str, lines: Iterable[bytes], *, file_id: str
    ) -> FileInfo:
        """Write JSONL ``lines`` (each without its newline) as a new file with a chosen id.

        Writing the same ``file_id`` again replaces the content and keeps one row, so a
        finalization that is repeated after a crash does not leave two files."""
        self._prepare()
        rel = f"{file_id}.jsonl"
        size = await asyncio.to_thread(_write_lines, self.root / rel, lines)
        async with self._db.session() as session:
            await session.execute(delete(StoredFile).where(StoredFile.id == file_id))
            await session.commit()
        return await self._insert(file_id, owner, purpose, filename, size, rel)

    async def get(self, file_id: str, owner: str | None) -> FileInfo | None:
        """The file, if it exists and (when ``owner`` is given) belongs to ``owner``."""
        async with self._db.session() as session:
            row = await session.get(StoredFile, file_id)
        if row is None or (owner is not None and row.owner != owner):
            return None
        return FileInfo.of(row)

    async def list(
        self,
        owner: str,
        *,
        purpose: str | None = None,
        after: str | None = None,
        limit: int = 100,
        order: str = "desc",
    ) -> builtins.list[FileInfo]:
        stmt = select(StoredFile).where(StoredFile.owner == owner)
        if purpose is not None:
            stmt = stmt.where(StoredFile.purpose == purpose)
        key = (StoredFile.created_at, StoredFile.id)
        if after is not None:
            anchor = await self.get(after, owner)
            if anchor is not None:
                if order == "desc":
                    stmt = stmt.where(
                        (StoredFile.created_at < anchor.created_at)
                        | ((StoredFile.created_at == anchor.created_at) & (StoredFile.id < anchor.id))
                    )
                else:
                    stmt = stmt.where(
                        (StoredFile.created_at > anchor.created_at)
                        | ((StoredFile.created_at == anchor.created_at) & (StoredFile.id > anchor.id))
                    )
        stmt = stmt.order_by(*(k.desc() for k in key) if order == "desc" else key).limit(limit)
        async with self._db.session() as session:
            rows = (await session.scalars(stmt)).all()
        return [FileInfo.of(r) for r in rows]

    async def delete(self, file_id: str, owner: str) -> bool:
        info = await self.get(file_id, owner)
        if info is None:
            return False
        async with self._db.session() as session:
            await session.execute(delete(StoredFile).where(StoredFile.id == file_id))
            await session.commit()
        self.local_path(info).unlink(missing_ok=True)
        return True

    def copy_to(self, info: FileInfo, dest: Path) -> None:
        shutil.copyfile(self.local_path(info), dest)

    async def _insert(
        self, file_id: str, owner: str, purpose: str, filename: str, size: int, rel: str
    ) -> FileInfo:
        row = StoredFile(
            id=file_id,
            owner=owner,
            purpose=purpose,
            filename=filename[:255],
            bytes=size,
            created_at=utcnow(),
            path=rel,
        )
        async with self._db.session() as session:
            session.add(row)
            await session.commit()
        return FileInfo.of(row)


def _write_stream(dest: Path, source: IO[bytes], max_bytes: int) -> int:
    """Copy ``source`` to ``dest`` through a temporary file; ``ValueError`` past ``max_bytes``."""

    def chunks() -> Iterator[bytes]:
        size = 0
        while chunk := source.read(1 << 20):
            size += len(chunk)
            if size > max_bytes:
                raise ValueError(f"the file is larger than the limit of {max_bytes} bytes")
            yield chunk

    return _write_atomically(dest, chunks())


def _write_lines(dest: Path, lines: Iterable[bytes]) -> int:
    return _write_atomically(dest, (part for line in lines for part in (line, b"\n")))


def _write_atomically(dest: Path, parts: Iterable[bytes]) -> int:
    """Write ``parts`` to a temporary file (0600) beside ``dest``, fsync, rename; the size."""
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    size = 0
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            for part in parts:
                out.write(part)
                size += len(part)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return size
