"""Exact answers for one subdomain: the network as a mixed-integer program solved by HiGHS.

Every affine layer is an equality block ``z = W a + b``; a ReLU whose bounds [l, u] (splits
applied) leave it stable is exact (``a = z`` or ``a = 0``), an unstable one gets the standard
big-M encoding with one binary. The pre-activation bounds are the variables' bounds, which is also
how split constraints enter. With no unstable ReLU left the program is a linear one, so leaves of
the branch and bound are decided exactly; with some left, it is still exact, only slower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sparse
import torch
from scipy.optimize import Bounds, LinearConstraint, milp

from ..bounds.types import Box
from ..nets.spec import Flatten, NetSpec, Normalize, ReLU
from ..population import forward

TOLERANCE = 1e-6
"""A row's minimum must exceed this to count as verified: HiGHS's feasibility tolerance is 1e-7."""


@dataclass(frozen=True)
class AffineBlock:
    """``out = matrix @ in + offset`` for one layer of a single network (Normalize, Conv2d or Linear)."""

    matrix: sparse.csr_matrix
    offset: np.ndarray


def affine_blocks(spec: NetSpec, theta: torch.Tensor) -> dict[int, AffineBlock]:
    """Each non-ReLU, non-Flatten layer as a sparse matrix, read off by pushing the identity basis through it."""
    params = theta.detach().to(torch.float64).view(1, -1)
    blocks: dict[int, AffineBlock] = {}
    for index, layer in enumerate(spec.layers):
        if isinstance(layer, (ReLU, Flatten)):
            continue
        if isinstance(layer, Normalize):  # (x - mean) / std per channel: diagonal, and no NetSpec of its own
            shape = spec.shapes[index]
            std = np.broadcast_to(np.array(layer.std).reshape(-1, 1, 1), shape).reshape(-1)
            mean = np.broadcast_to(np.array(layer.mean).reshape(-1, 1, 1), shape).reshape(-1)
            blocks[index] = AffineBlock(sparse.diags(1.0 / std).tocsr(), -mean / std)
            continue
        sub = NetSpec(spec.shapes[index], (layer,), name="block")
        slot = spec.slots[index]
        sub_params = params[:, :0] if slot is None else params[:, slot.weight_offset:slot.end]
        size = math.prod(spec.shapes[index])
        with torch.no_grad():
            offset = forward(sub, sub_params, torch.zeros(1, *spec.shapes[index], dtype=torch.float64))[0, 0]
            basis = torch.eye(size, dtype=torch.float64).view(size, *spec.shapes[index])
            columns = forward(sub, sub_params, basis)[0].reshape(size, -1) - offset.reshape(1, -1)
        dense = columns.T.numpy()
        dense[np.abs(dense) < 1e-12] = 0.0
        blocks[index] = AffineBlock(sparse.csr_matrix(dense), offset.reshape(-1).numpy())
    return blocks


@dataclass(frozen=True)
class LeafAnswer:
    """``falsified`` carries the input the solver found (still to be checked by a forward pass)."""

    status: Literal["verified", "falsified", "unknown"]
    value: float  # the row's minimum (a lower bound on it when unknown)
    point: torch.Tensor | None


class _Program:
    """Columns (variables with bounds), sparse constraint rows and integrality, built block by block."""

    def __init__(self) -> None:
        self.lower: list[float] = []
        self.upper: list[float] = []
        self.integral: list[int] = []
        self.entries: tuple[list[int], list[int], list[float]] = ([], [], [])
        self.row_lower: list[float] = []
        self.row_upper: list[float] = []

    def columns(self, lower: np.ndarray, upper: np.ndarray, binary: bool = False) -> np.ndarray:
        start = len(self.lower)
        self.lower.extend(lower.tolist())
        self.upper.extend(upper.tolist())
        self.integral.extend([int(binary)] * lower.size)
        return np.arange(start, start + lower.size)

    def rows(self, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, lower: np.ndarray,
             upper: np.ndarray) -> None:
        """Constraints ``lower <= sum values * x[cols] <= upper``; ``rows`` numbers them from 0."""
        base = len(self.row_lower)
        self.entries[0].extend((rows + base).tolist())
        self.entries[1].extend(cols.tolist())
        self.entries[2].extend(values.tolist())
        self.row_lower.extend(lower.tolist())
        self.row_upper.extend(upper.tolist())

    def affine(self, block: AffineBlock, inputs: np.ndarray) -> np.ndarray:
        size = block.offset.size
        out = self.columns(np.full(size, -np.inf), np.full(size, np.inf))
        matrix = block.matrix.tocoo()
        self.rows(np.concatenate([np.arange(size), matrix.row]), np.concatenate([out, inputs[matrix.col]]),
                  np.concatenate([np.ones(size), -matrix.data]), block.offset, block.offset)
        return out

    def relu(self, inputs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """ReLU of ``inputs`` known to lie in [lo, hi]: exact when stable, big-M with a binary otherwise."""
        for column, zl, zu in zip(inputs.tolist(), lo.tolist(), hi.tolist()):
            self.lower[column] = max(self.lower[column], zl)
            self.upper[column] = min(self.upper[column], zu)
        out = self.columns(np.maximum(lo, 0.0), np.maximum(hi, 0.0))
        active = lo >= 0
        z, a = inputs[active], out[active]  # a = z
        count = z.size
        self.rows(np.repeat(np.arange(count), 2), np.stack([a, z], 1).ravel(), np.tile([1.0, -1.0], count),
                  np.zeros(count), np.zeros(count))
        unstable = (lo < 0) & (hi > 0)
        z, a, zl, zu = inputs[unstable], out[unstable], lo[unstable], hi[unstable]
        count = z.size
        flag = self.columns(np.zeros(count), np.ones(count), binary=True)
        one = np.ones(count)
        # Three rows per neuron: a >= z;  a <= u d;  a <= z - l (1 - d)
        self.rows((np.array([0, 0, 1, 1, 2, 2, 2]) + 3 * np.arange(count)[:, None]).ravel(),
                  np.stack([a, z, a, flag, a, z, flag], 1).ravel(),
                  np.stack([one, -one, one, -zu, one, -one, -zl], 1).ravel(),
                  np.stack([0 * one, -np.inf * one, -np.inf * one], 1).ravel(),
                  np.stack([np.inf * one, 0 * one, -zl], 1).ravel())
        return out

    def matrix(self) -> sparse.csr_matrix:
        rows, cols, values = self.entries
        return sparse.csr_matrix((values, (rows, cols)), shape=(len(self.row_lower), len(self.lower)))


def solve_row(spec: NetSpec, blocks: dict[int, AffineBlock], lower: torch.Tensor, upper: torch.Tensor,
              pre_relu: dict[int, Box], c: torch.Tensor, d: float | torch.Tensor, time_limit: float) -> LeafAnswer:
    """Whether some x in [lower, upper] (ReLU bounds ``pre_relu``, [*shape] each) has every row ``c f(x) + d`` <= 0.

    ``c`` is one row [classes] or a group of rows [R, classes] (a VNN-LIB case with several output
    constraints) with ``d`` [R]; the program minimises the first row subject to all of them.
    """
    rows_c = c.double().reshape(-1, c.shape[-1]).numpy()
    rows_d = torch.as_tensor(d, dtype=torch.float64).reshape(-1).numpy()
    program = _Program()
    x = program.columns(lower.reshape(-1).double().numpy(), upper.reshape(-1).double().numpy())
    current = x
    for index, layer in enumerate(spec.layers):
        if isinstance(layer, ReLU):
            bounds = pre_relu[index]
            current = program.relu(current, bounds.lower.reshape(-1).double().numpy(),
                                   bounds.upper.reshape(-1).double().numpy())
        elif not isinstance(layer, Flatten):
            current = program.affine(blocks[index], current)
    objective = np.zeros(len(program.lower))
    objective[current] = rows_c[0]
    d = float(rows_d[0])
    lo_all, hi_all = np.array(program.lower), np.array(program.upper)
    if bool((lo_all > hi_all).any()):
        return LeafAnswer("verified", math.inf, None)  # the splits leave no input
    # Only the sign matters: asking for a point with every row <= TOLERANCE lets HiGHS prune every node
    # whose relaxation is above it, and infeasibility proves the group (a lower bound above TOLERANCE on the
    # first row, which the constraints cap at TOLERANCE, proves it too).
    for coefficients, offset in zip(rows_c, rows_d):
        nonzero = np.flatnonzero(coefficients)
        program.rows(np.zeros(nonzero.size, dtype=np.int64), current[nonzero], coefficients[nonzero],
                     np.array([-np.inf]), np.array([TOLERANCE - offset]))
    constraint = LinearConstraint(program.matrix(), np.array(program.row_lower), np.array(program.row_upper))
    result = milp(objective, integrality=np.array(program.integral), bounds=Bounds(lo_all, hi_all),
                  constraints=constraint, options={"time_limit": max(time_limit, 0.01), "disp": False})
    if result.status == 2:  # infeasible: no input of this subdomain brings the row down to TOLERANCE
        return LeafAnswer("verified", TOLERANCE, None)
    point = None if result.x is None else torch.from_numpy(np.clip(result.x[x], lo_all[x], hi_all[x])).reshape(
        lower.shape)
    if result.status == 0 and result.x is not None:
        value = float((rows_c @ result.x[current] + rows_d).max())  # the group's margin at the point
        if value > TOLERANCE:
            return LeafAnswer("verified", value, None)
        return LeafAnswer("falsified" if value <= 0 else "unknown", value, point)
    dual = getattr(result, "mip_dual_bound", None)
    bound = float(dual) + d if dual is not None and np.isfinite(dual) else -math.inf
    return LeafAnswer("verified", bound, None) if bound > TOLERANCE else LeafAnswer("unknown", bound, point)
