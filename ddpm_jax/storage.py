"""File access for local and remote (``gs://``) paths, through ``etils.epath``.

Every file a workdir holds (config, history, lock, metrics, samples, evaluations, records) is read and written through
these functions, so a workdir may be a local folder or a ``gs://bucket/path`` without a mount; checkpoints go through
Orbax/TensorStore, which take the same paths. Paths stay strings: local ones are made absolute, remote ones are kept
as given (without a trailing slash).

What differs on object storage, and how it is handled here:
- no rename: an object write is atomic by itself, so ``write_*_atomic`` writes the final name directly (locally it
  writes a temporary file and renames it);
- no append: ``append_text`` rewrites the object (callers hold the workdir lock);
- no exclusive open: ``create_exclusive`` uses GCS's ``ifGenerationMatch=0`` precondition (through gcsfs);
- no directories: ``makedirs`` is a no-op there, and a "directory" exists when an object lies under it;
- no server-side move of a tree in every implementation: ``move_tree`` copies each object, then deletes the source.
"""
from __future__ import annotations

import io
import os
import shutil
from typing import Iterator

from etils import epath

REMOTE_PREFIXES = ("gs://",)


def is_remote(path) -> bool:
    return str(path).startswith(REMOTE_PREFIXES)


def resolve(path) -> str:
    """A canonical string for ``path``: absolute when local, unchanged (no trailing slash) when remote."""
    path = os.fspath(path)
    if is_remote(path):
        return path.rstrip("/")
    return os.path.abspath(path)


def join(base, *parts: str) -> str:
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(os.fspath(base), *parts)


def dirname(path) -> str:
    path = os.fspath(path)
    if is_remote(path):
        return path.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(path)


def _p(path) -> epath.Path:
    return epath.Path(os.fspath(path))


def exists(path) -> bool:
    return _p(path).exists()


def isdir(path) -> bool:
    return _p(path).is_dir()


def isfile(path) -> bool:
    return _p(path).is_file()


def makedirs(path) -> None:
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def listdir(path) -> list[str]:
    """Names directly under ``path`` (files and folders), sorted; [] when there is none."""
    if not isdir(path):
        return []
    return sorted(p.name for p in _p(path).iterdir())


def walk_files(path) -> Iterator[str]:
    """Every file under ``path``, as full paths (on gs://, one listing of the prefix)."""
    if is_remote(path):
        import fsspec

        yield from ("gs://" + p for p in fsspec.filesystem("gs").find(str(path).rstrip("/")))
        return
    for root, _, files in os.walk(path):
        for name in files:
            yield os.path.join(root, name)


def open_file(path, mode: str = "r"):
    """A file object (text or binary) for reading or writing; remote writes land when it is closed."""
    if not is_remote(path):
        return open(path, mode)
    return _p(path).open(mode)


def read_text(path) -> str:
    return _p(path).read_text()


def read_bytes(path) -> bytes:
    return _p(path).read_bytes()


def write_bytes_atomic(path, data: bytes) -> None:
    """Readers see the old content or the new one, never a part."""
    if is_remote(path):
        _p(path).write_bytes(data)
        return
    makedirs(os.path.dirname(os.path.abspath(path)))
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def create_exclusive(path, data: bytes) -> bool:
    """Create ``path`` with ``data`` unless it exists (atomically); False when it already existed."""
    if is_remote(path):
        import gcsfs  # the gs:// file system behind epath (a dependency)

        try:
            gcsfs.GCSFileSystem().pipe_file(str(path), data, mode="create")  # ifGenerationMatch=0
        except FileExistsError:
            return False
        except OSError as e:
            if "412" in str(e) or "Precondition" in str(e):
                return False
            raise
        return True
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        os.link(tmp, path)  # atomic, complete when visible, and refuses to replace an existing file
    except FileExistsError:
        return False
    finally:
        os.remove(tmp)
    return True


def append_text(path, text: str) -> None:
    """Append ``text``; on object storage the object is rewritten (the caller is the workdir's one writer)."""
    if not is_remote(path):
        with open(path, "a") as f:
            f.write(text)
        return
    old = read_text(path) if exists(path) else ""
    _p(path).write_text(old + text)


def remove(path, missing_ok: bool = True) -> None:
    try:
        _p(path).unlink()
    except FileNotFoundError:
        if not missing_ok:
            raise


def rmtree(path) -> None:
    if isdir(path):
        _p(path).rmtree()


def move_tree(src, dst) -> None:
    """Move the folder ``src`` to ``dst`` (which must not exist)."""
    if not is_remote(src) and not is_remote(dst):
        makedirs(os.path.dirname(dst))
        shutil.move(src, dst)
        return
    src_s = str(src).rstrip("/")
    for f in list(walk_files(src_s)):
        target = _p(join(dst, f[len(src_s) + 1:]))
        target.write_bytes(_p(f).read_bytes())
    rmtree(src_s)


def save_npz(path, **arrays) -> None:
    """``np.savez`` to a local or remote path, atomically."""
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


def read_json(path):
    """The JSON document at ``path``, or None when there is no such file."""
    import json

    if not exists(path):
        return None
    return json.loads(read_text(path))


def write_json(path, obj, **kwargs) -> None:
    """``obj`` as JSON (indent 2 unless given), atomically."""
    import json

    kwargs.setdefault("indent", 2)
    write_text_atomic(path, json.dumps(obj, **kwargs))


def load_npz(path) -> dict:
    """The arrays of an .npz at a local or remote path (loaded whole)."""
    import numpy as np

    with np.load(io.BytesIO(read_bytes(path)), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def save_npy(path, array) -> None:
    """``np.save`` to a local or remote path, atomically."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array)
    write_bytes_atomic(path, buf.getvalue())


def load_npy(path):
    import numpy as np

    return np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)
