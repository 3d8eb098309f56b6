"""Per-run results on disk, so that an interrupted benchmark resumes where it stopped."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re

_MAX_NAME = 120
_LIBRARY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "conicgrad_jax")


@functools.lru_cache(maxsize=None)
def library_fingerprint(root: str = _LIBRARY) -> str:
  """A digest of the library's Python sources, read once per process (the code it
  runs): runs stored under another one came from other code (recorded with every
  run as ``"library"``)."""
  digest = hashlib.sha1()
  for folder, _, files in sorted(os.walk(root)):
    for name in sorted(f for f in files if f.endswith(".py")):
      path = os.path.join(folder, name)
      digest.update(os.path.relpath(path, root).encode())
      with open(path, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()[:12]


class RunStore:
  """One JSON file per run under ``OUT/NAME_runs/``; ``get`` returns None for runs not yet done."""

  def __init__(self, out: str, name: str):
    self.folder = os.path.join(out, f"{name}_runs")
    os.makedirs(self.folder, exist_ok=True)

  def _path(self, key: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", key)
    if len(name) > _MAX_NAME:
      # File names are limited (255 bytes on most file systems): a long key keeps its
      # start and gets a digest of the whole key instead of the rest.
      digest = hashlib.sha1(key.encode()).hexdigest()[:12]
      name = f"{name[:_MAX_NAME - 13]}-{digest}"
    return os.path.join(self.folder, name + ".json")

  def get(self, key: str):
    path = self._path(key)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)

  def put(self, key: str, result: dict) -> dict:
    result = {**result, "library": result.get("library", library_fingerprint())}
    tmp = self._path(key) + ".tmp"
    with open(tmp, "w") as f:
      json.dump(result, f, indent=1)
    os.replace(tmp, self._path(key))
    return result

  def run(self, key: str, compute, *, current_library_only: bool = False):
    """The stored result of ``key``, or ``compute()`` stored under it.

    With ``current_library_only`` a result stored by another version of the
    library (see :func:`library_fingerprint`) is computed again.
    """
    found = self.get(key)
    if found is not None and not (current_library_only
                                  and found.get("library") != library_fingerprint()):
      return found
    return self.put(key, compute())

  def from_other_libraries(self) -> list:
    """The keys (file names) of the stored runs that another library version computed."""
    current, other = library_fingerprint(), []
    for name in sorted(os.listdir(self.folder)):
      if name.endswith(".json"):
        with open(os.path.join(self.folder, name)) as f:
          if json.load(f).get("library") != current:
            other.append(name[:-len(".json")])
    return other
