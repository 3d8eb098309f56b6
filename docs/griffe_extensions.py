"""Griffe extension for the API pages: docstrings are read as the plain text they are written as.

- A Google-style ``Example:`` section is read as ``Examples:`` (griffe's Google parser
  knows only the plural title; with the singular one the doctest would be rendered as
  Markdown text instead of a code block).
- ``[a][b]`` in prose (Iverson brackets, e.g. ``[P > U][g_i > 0]``) is not a Markdown
  reference link: the second bracket is escaped outside code spans and doctest lines.
"""

import re

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


def _escape_reference_brackets(line: str) -> str:
  if line.lstrip().startswith((">>>", "...")):
    return line
  parts = line.split("`")
  parts[::2] = [part.replace("][", "]\\[") for part in parts[::2]]
  return "`".join(parts)


def plain_text(docstring: str) -> str:
  docstring = _EXAMPLE.sub(r"\1Examples:", docstring)
  return "\n".join(_escape_reference_brackets(line) for line in docstring.split("\n"))


class PlainTextDocstrings(griffe.Extension):

  def on_instance(self, *, obj, **kwargs):
    del kwargs
    if obj.docstring is not None:
      obj.docstring.value = plain_text(obj.docstring.value)
