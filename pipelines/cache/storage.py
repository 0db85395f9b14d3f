"""Where the TF-free reader finds a cache's files: the local disk, or any `etils.epath` path.

    files = storage.for_path('/data/cache')       # LocalFiles: os calls, `os.pread` reads
    files = storage.for_path('gs://bucket/cache')  # EpathFiles: etils.epath (gs://, s3://, ...)
    files.exists(path); files.isdir(path); files.listdir(path); files.glob(dir, 'train.tfrecord-*')
    files.size(path); files.read_bytes(path); files.read_at(path, offset, size)

Both keep one open handle per file and process (dropped when pickled, so Grain worker processes
open their own). `LocalFiles.read_at` is `os.pread` (no shared file position: reader threads share
the descriptor); `EpathFiles.read_at` seeks and reads under a per-file lock. `etils` is imported
only for a URI; epath reads gs:// through TensorFlow's gfile when TF is importable, else through
fsspec (`gcsfs` must then be installed), so on the TF-free GPU images install `gcsfs`.
"""
from __future__ import annotations

import glob as glob_lib
import os
import threading
from typing import Dict, List


def is_uri(path: str) -> bool:
  return '://' in str(path)


class LocalFiles:
  """A cache on a local (or mounted, e.g. gcsfuse) file system."""

  def __init__(self):
    self._fds: Dict[str, int] = {}

  def __getstate__(self):
    return {'_fds': {}}

  def __del__(self):
    for fd in getattr(self, '_fds', {}).values():
      try:
        os.close(fd)
      except OSError:
        pass

  exists = staticmethod(os.path.exists)
  isdir = staticmethod(os.path.isdir)
  size = staticmethod(os.path.getsize)

  @staticmethod
  def listdir(path: str) -> List[str]:
    return os.listdir(path)

  @staticmethod
  def glob(directory: str, pattern: str) -> List[str]:
    return sorted(glob_lib.glob(os.path.join(directory, pattern)))

  @staticmethod
  def read_bytes(path: str) -> bytes:
    with open(path, 'rb') as f:
      return f.read()

  def read_at(self, path: str, offset: int, size: int) -> bytes:
    fd = self._fds.get(path)
    if fd is None:
      fd = self._fds[path] = os.open(path, os.O_RDONLY)
    return os.pread(fd, size, offset)


class EpathFiles:
  """A cache behind `etils.epath` (gs://, s3://, ...; any path it takes, local ones included)."""

  def __init__(self):
    try:
      from etils import epath  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ValueError(f'reading a cache from a URI needs etils[epath] ({e}); or mount the '
                       'bucket (gcsfuse) and give the local path') from None
    self._epath = epath
    self._handles: Dict[str, tuple] = {}
    self._lock = threading.Lock()

  def __getstate__(self):
    return {'reopen': True}  # (A false state would skip __setstate__.)

  def __setstate__(self, state):
    del state
    self.__init__()

  def __del__(self):
    for handle, _ in getattr(self, '_handles', {}).values():
      try:
        handle.close()
      except Exception:  # pylint: disable=broad-except  (interpreter shutdown, remote errors)
        pass

  def _path(self, path: str):
    return self._epath.Path(path)

  def exists(self, path: str) -> bool:
    return self._path(path).exists()

  def isdir(self, path: str) -> bool:
    return self._path(path).is_dir()

  def size(self, path: str) -> int:
    return self._path(path).stat().length

  def listdir(self, path: str) -> List[str]:
    return [p.name for p in self._path(path).iterdir()]

  def glob(self, directory: str, pattern: str) -> List[str]:
    return sorted(os.path.join(directory, p.name) for p in self._path(directory).glob(pattern))

  def read_bytes(self, path: str) -> bytes:
    return self._path(path).read_bytes()

  def read_at(self, path: str, offset: int, size: int) -> bytes:
    entry = self._handles.get(path)
    if entry is None:
      with self._lock:
        entry = self._handles.get(path)
        if entry is None:
          entry = self._handles[path] = (self._path(path).open('rb'), threading.Lock())
    handle, lock = entry
    with lock:
      handle.seek(offset)
      return handle.read(size)


def for_path(path: str):
  """`EpathFiles` for a URI (`scheme://...`), else `LocalFiles`."""
  return EpathFiles() if is_uri(path) else LocalFiles()
