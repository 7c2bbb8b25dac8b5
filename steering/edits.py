"""The three interventions, as exact functions of a layer's output h (..., d_model).

    add     h + a * |h| * u                              u a unit direction, |h| per position
    rotate  h + Q (R(theta) - I) (Q^T h - c)             Q (d, 2) an orthonormal basis of a phase plane,
                                                         c a centre in that basis (steering: the point the
                                                         plane's readout reads as zero, or the training
                                                         mean's projection): the in-plane part about the
                                                         centre turns by theta, its length and everything
                                                         orthogonal stay
    ablate  h - B (B^T h - B^T mu)                       B (d, k) orthonormal (a direction or a plane):
                                                         the component along B is set to the training
                                                         mean's
    matched h + |edit(h) - h| * u                        a size-matched control of another edit: at each
                                                         position h moves as far as that edit moves it,
                                                         along a random unit direction u

Each edit is `h + delta(h)` with delta exactly 0 at zero strength, so a zero edit reproduces
unsteered generation token for token. Planes come from a 2-D readout u = x @ W + b (directions.py):
Q spans W's columns, oriented so that turning by +theta about the point where the readout is zero
turns the readout's angle atan2(u1, u0) the same way (toward a later phase). The readout's angle then
moves by exactly theta only if Q^T W is a scaled rotation, otherwise by a monotone function of theta.
About any other centre it need not: about the training mean, which the readout reads as the mean
target (not zero when the phases are not uniform: a conversation has more assistant tokens), a
position near that centre turns a little, or backwards. `Rotate.phase_shift` measures how far the
readout's angle moved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Add:
    u: torch.Tensor  # (d,) unit
    a: float

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.a * h.norm(dim=-1, keepdim=True) * self.u.to(h)


@dataclass
class Readout:
    """A plane's 2-D readout u = x @ weight + bias in the plane's own coordinates p = Q^T x:
    u = p @ m + b (exact, since Q spans weight's columns); its phase estimate is atan2(u1, u0)."""

    m: torch.Tensor  # (2, 2) = Q^T weight
    b: torch.Tensor  # (2,)

    @classmethod
    def of(cls, q: torch.Tensor, weight: np.ndarray, bias: np.ndarray) -> Readout:
        return cls(q.double().T @ torch.as_tensor(weight).double(), torch.as_tensor(bias).double())

    def zero(self) -> torch.Tensor:
        """The plane coordinates the readout reads as (0, 0): the centre of its phase estimate."""
        return torch.linalg.solve(self.m.T, -self.b).float()

    def angle(self, p: torch.Tensor) -> torch.Tensor:
        u = p.double() @ self.m.to(p.device) + self.b.to(p.device)
        return torch.atan2(u[..., 1], u[..., 0])


@dataclass
class Rotate:
    q: torch.Tensor  # (d, 2) orthonormal columns
    centre: torch.Tensor  # (2,) in the basis q
    degrees: float
    readout: Readout | None = None  # the plane's, when it has one (a random plane has none)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        t = np.radians(self.degrees)
        turn = torch.tensor(
            [[np.cos(t) - 1.0, -np.sin(t)], [np.sin(t), np.cos(t) - 1.0]], dtype=h.dtype, device=h.device
        )
        q = self.q.to(h)
        c = h @ q - self.centre.to(h)  # (..., 2)
        return h + (c @ turn.T) @ q.T

    def phase_shift(self, h: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """(...,) degrees the readout's phase estimate moved from h to new = self(h), taken within
        180 degrees of the intended turn (so a 180-degree turn that lands exactly reads 180)."""
        q = self.q.to(device=h.device, dtype=torch.float64)  # angles in float64, whatever h's dtype
        moved = torch.rad2deg(self.readout.angle(new.double() @ q) - self.readout.angle(h.double() @ q))
        return self.degrees + torch.remainder(moved - self.degrees + 180.0, 360.0) - 180.0


@dataclass
class Ablate:
    basis: torch.Tensor  # (d, k) orthonormal columns
    mean: torch.Tensor  # (d,) training mean: the value the removed component is set to

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        b = self.basis.to(h)
        return h - ((h - self.mean.to(h)) @ b) @ b.T


@dataclass
class Matched:
    edit: object  # the edit whose size, position by position, this control takes
    u: torch.Tensor  # (d,) unit

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        size = (self.edit(h) - h).norm(dim=-1, keepdim=True)
        return h + size * self.u.to(h)


def unit(v: np.ndarray) -> torch.Tensor:
    v = np.asarray(v, dtype=np.float64).ravel()
    return torch.from_numpy(v / np.linalg.norm(v)).float()


def plane_basis(weight: np.ndarray) -> torch.Tensor:
    """Q (d, 2), an orthonormal basis of the plane a 2-D readout u = x @ weight + b reads.

    For x in the plane u = (Q^T x) @ M + b with M = Q^T weight; Q's second column is flipped if
    det M < 0, so the readout's angle (about its zero) grows with the angle in Q's coordinates."""
    weight = np.asarray(weight, dtype=np.float64)
    q, _ = np.linalg.qr(weight)
    if np.linalg.det(q.T @ weight) < 0:
        q[:, 1] *= -1
    return torch.from_numpy(q).float()


def random_directions(n: int, d: int, seed: int) -> list[torch.Tensor]:
    """n unit directions, uniform on the sphere."""
    g = np.random.default_rng([seed, 1])
    return [unit(v) for v in g.standard_normal((n, d))]


def random_offsets(n: int, seed: int) -> list[torch.Tensor]:
    """n unit vectors of a plane's coordinates, at uniform angles: where a random plane's centre
    of rotation lies from the training mean (conditions.py, the offset controls)."""
    angles = np.random.default_rng([seed, 3]).uniform(0.0, 2 * np.pi, n)
    return [torch.tensor([np.cos(t), np.sin(t)], dtype=torch.float32) for t in angles]


def random_planes(n: int, d: int, seed: int) -> list[torch.Tensor]:
    """n planes, uniform: orthonormal (d, 2) bases."""
    g = np.random.default_rng([seed, 2])
    return [torch.from_numpy(np.linalg.qr(g.standard_normal((d, 2)))[0]).float() for _ in range(n)]
