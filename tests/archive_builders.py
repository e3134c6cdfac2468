"""Builders of small tar archives for the tests (archives, datasets, the malformed-input corpus).

Importable from every test module: pytest puts the folder of tests/conftest.py on sys.path.
"""

import io
import tarfile


def add_member(tar: tarfile.TarFile, name: str, data: bytes = b"", **fields: object) -> None:
    """Add `name` with `data`; `fields` set TarInfo attributes (type, linkname, mode...)."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def tar_bytes(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar of `files` (name -> bytes) in memory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            add_member(tar, name, data)
    return buffer.getvalue()
