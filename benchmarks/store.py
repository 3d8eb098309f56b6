"""Per-run results on disk, so that an interrupted benchmark resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
import os
import re

_MAX_NAME = 120


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
    tmp = self._path(key) + ".tmp"
    with open(tmp, "w") as f:
      json.dump(result, f, indent=1)
    os.replace(tmp, self._path(key))
    return result

  def run(self, key: str, compute):
    """The stored result of ``key``, or ``compute()`` stored under it."""
    found = self.get(key)
    return found if found is not None else self.put(key, compute())
