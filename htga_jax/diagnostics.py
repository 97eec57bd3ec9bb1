"""Reading HTGA's state: per-layer tail indices and multipliers."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

__all__ = ["path_name", "tail_index_report"]


def path_name(path: tuple[Any, ...]) -> str:
  """A human-readable name for a pytree key path, e.g. ``"dense/kernel"``.

  Dict keys, attribute names and sequence indices are joined with ``/``; the
  ``.value`` attribute through which Flax NNX variables hold their array is
  dropped, so ``nnx.split`` states and linen dicts read the same.
  """
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      if key.name != "value":
        parts.append(key.name)
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    elif isinstance(key, jax.tree_util.FlattenedIndexKey):
      parts.append(str(key.key))
    else:
      parts.append(str(key))
  return "/".join(parts)


def tail_index_report(opt_state: Any) -> dict[str, dict[str, float]]:
  """Per-leaf tail index and multiplier from an optimizer state.

  Finds the single :class:`htga_jax.ScaleByTailIndexState` inside
  ``opt_state`` (however deeply chained or wrapped) by its ``alpha`` and
  ``scale`` fields and reads them to the host. Call it outside the jitted
  step: it transfers one scalar per leaf.

  Args:
    opt_state: an optimizer state containing exactly one HTGA state.

  Returns:
    ``{leaf path: {"alpha": a, "scale": s}}`` in the params' leaf order.
    ``alpha == 0`` means no estimate yet (or a leaf too small for ``min_k``).

  Raises:
    ValueError: if ``opt_state`` holds no HTGA state, or several.
  """
  try:
    alpha = optax.tree_utils.tree_get(opt_state, "alpha")
    scale = optax.tree_utils.tree_get(opt_state, "scale")
  except KeyError as e:
    raise ValueError(
      "opt_state holds several HTGA states; pass the one to report (e.g. opt_state[0])"
    ) from e
  if alpha is None or scale is None:
    raise ValueError("opt_state holds no HTGA state (no 'alpha'/'scale' fields)")
  named = jax.tree_util.tree_leaves_with_path(alpha)
  scales = jax.tree.leaves(scale)
  return {
    path_name(path): {"alpha": float(np.asarray(a)), "scale": float(np.asarray(s))}
    for (path, a), s in zip(named, scales, strict=True)
  }
