"""Sharpness: the top eigenvalues of the loss Hessian, from Hessian-vector products."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from htga_jax import _validation

__all__ = ["HessianEigen", "hessian_top_eigenvalues", "hessian_vector_product"]


def hessian_vector_product(loss_fn: Callable[..., jax.Array], params: Any, vector: Any, *args):
  """``H v`` for the Hessian of ``loss_fn(params, *args)`` at ``params``.

  Forward-over-reverse (``jax.jvp`` of ``jax.grad``): one forward and one
  backward pass, never the Hessian itself.
  """
  grad = lambda p: jax.grad(loss_fn)(p, *args)
  return jax.jvp(grad, (params,), (vector,))[1]


class HessianEigen(NamedTuple):
  """Result of :func:`hessian_top_eigenvalues`."""

  eigenvalues: jax.Array  # (num,) float32, largest magnitude first
  eigenvectors: jax.Array  # (num, num_params) float32, unit norm, flattened params
  iterations: jax.Array  # (num,) int32, power iterations used for each


def hessian_top_eigenvalues(
  loss_fn: Callable[..., jax.Array],
  params: Any,
  *args: Any,
  num: int = 1,
  max_iters: int = 100,
  tol: float = 1e-3,
  key: jax.Array | None = None,
) -> HessianEigen:
  r"""Top Hessian eigenvalues by deflated power iteration (as in PyHessian).

  For ``i = 1..num``: start from a random unit vector orthogonal to the
  eigenvectors found so far and iterate :math:`v \leftarrow \tilde H v /
  \lVert \tilde H v \rVert` with the deflated operator
  :math:`\tilde H v = H v - \sum_{j<i} \lambda_j (v_j^\top v) v_j`, until the
  Rayleigh quotient :math:`\lambda = v^\top \tilde H v` changes by less than
  ``tol`` relative to its size, or ``max_iters`` iterations. Power iteration
  converges to the eigenvalue of largest *magnitude*; at a minimum that is
  the top (sharpest) one. Jit-able: ``num`` and ``max_iters`` are static.

  Args:
    loss_fn: ``loss_fn(params, *args) -> scalar``.
    params: the point at which the Hessian is taken.
    *args: passed to ``loss_fn`` (e.g. a batch).
    num: how many eigenvalues (static int >= 1).
    max_iters: iteration cap per eigenvalue (static int >= 1).
    tol: relative tolerance on the eigenvalue (> 0).
    key: PRNG key for the starting vectors (default ``jax.random.key(0)``).

  Returns:
    :class:`HessianEigen`: eigenvalues (largest magnitude first),
    eigenvectors on the flattened params (``jax.flatten_util.ravel_pytree``
    order), and the iterations each took.

  References:
    Yao, Gholami, Keutzer, Mahoney, "PyHessian: neural networks through the
    lens of the Hessian", IEEE BigData 2020, arXiv:1912.07145.
  """
  num = _validation.static_int("num", num, minimum=1)
  max_iters = _validation.static_int("max_iters", max_iters, minimum=1)
  _validation.check_positive("tol", tol)
  key = jax.random.key(0) if key is None else key
  flat, unravel = ravel_pytree(params)
  dtype = flat.dtype  # HVPs run in the params' dtype; the iteration in float32

  def hvp(v):
    out = hessian_vector_product(loss_fn, params, unravel(v.astype(dtype)), *args)
    return ravel_pytree(out)[0].astype(jnp.float32)

  values, vectors, iterations = [], [], []
  for k in jax.random.split(key, num):
    found = jnp.stack(vectors) if vectors else jnp.zeros((0, flat.size), jnp.float32)
    lams = jnp.asarray(values, jnp.float32) if values else jnp.zeros((0,), jnp.float32)

    def project(v, found=found):  # remove the found directions
      return v - found.T @ (found @ v)

    def deflated(v, found=found, lams=lams):
      return hvp(v) - found.T @ (lams * (found @ v))

    v0 = project(jax.random.normal(k, flat.shape, jnp.float32))
    v0 = v0 / jnp.linalg.norm(v0)

    def cond(carry):
      _, lam, prev, it = carry
      close = jnp.abs(lam - prev) <= tol * (jnp.abs(lam) + 1e-12)
      return (it < max_iters) & ~((it > 1) & close)

    def body(carry):
      v, lam, _, it = carry
      hv = deflated(v)
      new_lam = jnp.vdot(v, hv)
      norm = jnp.linalg.norm(hv)
      v = jnp.where(norm > 0, project(hv) / jnp.where(norm > 0, norm, 1.0), v)
      return v, new_lam, lam, it + 1

    init = (v0, jnp.asarray(jnp.inf, jnp.float32), jnp.asarray(0.0, jnp.float32), jnp.asarray(0))
    v, lam, _, it = jax.lax.while_loop(cond, body, init)
    v = v / jnp.linalg.norm(v)
    values.append(jnp.vdot(v, deflated(v)))  # Rayleigh quotient of the final vector
    vectors.append(v)
    iterations.append(it)
  return HessianEigen(
    jnp.stack(values), jnp.stack(vectors), jnp.stack(iterations).astype(jnp.int32)
  )
