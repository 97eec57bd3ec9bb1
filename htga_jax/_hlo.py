"""Collectives read off compiled HLO text: what a step communicates.

For tests and benchmarks of sharded and data-parallel programs
(``jax.jit(f).lower(...).compile().as_text()``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import NamedTuple

_OPS = r"(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(-start)?\("
_ITEMSIZE = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "f64": 8, "s64": 8}


class Collective(NamedTuple):
  computation: str  # the HLO computation holding it ("ENTRY" for the entry one)
  op: str  # e.g. "all-reduce"
  results: tuple[tuple[str, int], ...]  # (dtype, element count) of each result
  line: str

  @property
  def bytes(self) -> int:
    return sum(n * _ITEMSIZE.get(dtype, 4) for dtype, n in self.results)


def collectives(hlo: str) -> list[Collective]:
  """Every collective instruction of ``hlo``, with its computation and result sizes."""
  found = []
  for name, line in _instructions(hlo):
    m = re.search(rf"=\s*(.*?)\s{_OPS}", line)
    if m:
      results = tuple(
        (dtype, math.prod(int(d) for d in dims.split(",") if d))
        for dtype, dims in re.findall(r"([a-z0-9]+)\[([0-9,]*)\]", m.group(1))
      )
      found.append(Collective(name, m.group(2), results, line))
  return found


def conditionals(hlo: str, computation: str = "ENTRY") -> list[str]:
  """The ``conditional`` instruction lines of one computation."""
  return [ln for name, ln in _instructions(hlo) if name == computation and " conditional(" in ln]


def _instructions(hlo: str) -> Iterator[tuple[str, str]]:
  """``(computation, line)`` for each line inside a computation ("ENTRY": the entry one)."""
  name = None
  for line in hlo.splitlines():
    head = re.match(r"(ENTRY )?%?([\w.\-]+) \(.*\{\s*$", line)
    if head:
      name = "ENTRY" if head.group(1) else head.group(2)
    elif name is not None:
      yield name, line
