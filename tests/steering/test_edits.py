"""Each edit does to a layer's output exactly what steering/edits.py says, and nothing at zero strength."""

import numpy as np
import pytest
import torch

from turnphase.steering.edits import (
    Ablate,
    Add,
    Matched,
    Readout,
    Rotate,
    plane_basis,
    random_directions,
    random_planes,
    unit,
)

D = 16


@pytest.fixture
def h():
    return torch.randn(3, 5, D, dtype=torch.float64) * 4 + 1


def test_add_moves_along_u_by_a_times_the_norm(h):
    u = unit(np.arange(D) - 3.0).double()
    out = Add(u, 0.3)(h)
    torch.testing.assert_close(out - h, 0.3 * h.norm(dim=-1, keepdim=True) * u)
    assert torch.equal(Add(u, 0.0)(h), h)


def test_rotate_turns_the_plane_part_about_its_centre_and_keeps_the_rest(h):
    rng = np.random.default_rng(0)
    q = plane_basis(rng.standard_normal((D, 2))).double()
    centre = torch.from_numpy(rng.standard_normal(2))
    torch.testing.assert_close(q.T @ q, torch.eye(2, dtype=torch.float64))
    out = Rotate(q, centre, 30.0)(h)
    before, after = h @ q - centre, out @ q - centre
    torch.testing.assert_close(after.norm(dim=-1), before.norm(dim=-1))  # length in the plane kept
    turned = torch.atan2(after[..., 1], after[..., 0]) - torch.atan2(before[..., 1], before[..., 0])
    torch.testing.assert_close(torch.remainder(turned, 2 * np.pi), torch.full_like(turned, np.radians(30)))
    rest = torch.eye(D, dtype=torch.float64) - q @ q.T
    torch.testing.assert_close(out @ rest, h @ rest)  # orthogonal complement untouched
    assert torch.equal(Rotate(q, centre, 0.0)(h), h)


def test_a_positive_rotation_turns_the_readouts_angle_forward(h):
    """The plane's orientation: turned about the readout's zero, +theta moves the readout's phase
    atan2(u1, u0) forward, for any readout (here ones that mirror the plane's coordinates), and
    phase_shift says by how much."""
    rng = np.random.default_rng(1)
    for _ in range(5):
        weight = rng.standard_normal((D, 2)) @ np.array([[1.0, 0.4], [0.2, -1.3]])
        bias = rng.standard_normal(2)
        q = plane_basis(weight)
        readout = Readout.of(q, weight, bias)
        centre = readout.zero()
        torch.testing.assert_close(
            (q @ centre).double().numpy() @ weight + bias, np.zeros(2), atol=1e-5, rtol=0
        )
        x = h.reshape(-1, D)
        rotate = Rotate(q.double(), centre.double(), 20.0, readout)
        u0 = x.numpy() @ weight + bias
        u1 = rotate(x).numpy() @ weight + bias
        step = np.angle(np.exp(1j * (np.arctan2(u1[:, 1], u1[:, 0]) - np.arctan2(u0[:, 1], u0[:, 0]))))
        assert (step > 0).all()
        np.testing.assert_allclose(rotate.phase_shift(x, rotate(x)).numpy(), np.degrees(step), atol=1e-4)


def test_about_the_readouts_zero_a_scaled_rotation_readout_turns_by_theta_and_about_another_point_not(h):
    """When the readout is a scaled rotation of the plane, turning about its zero moves the phase
    estimate by exactly theta (180 included); about another centre, such as a training mean the
    readout does not read as zero, positions turn by other amounts."""
    rng = np.random.default_rng(2)
    q = plane_basis(rng.standard_normal((D, 2))).double()
    t = np.radians(35.0)
    weight = q.numpy() @ (1.7 * np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]]))
    bias = np.array([0.8, -0.3])
    readout = Readout.of(q, weight, bias)
    x = h.reshape(-1, D)
    for theta in (90.0, -90.0, 180.0):
        rotate = Rotate(q, readout.zero().double(), theta, readout)
        torch.testing.assert_close(
            rotate.phase_shift(x, rotate(x)), torch.full((len(x),), theta, dtype=torch.float64)
        )
        off = Rotate(
            q, readout.zero().double() + torch.tensor([2.0, 0.0], dtype=torch.float64), theta, readout
        )
        assert (off.phase_shift(x, off(x)) - theta).abs().max() > 5.0


def test_ablate_sets_the_component_to_the_training_means(h):
    basis = random_planes(1, D, seed=3)[0].double()
    mean = torch.randn(D, dtype=torch.float64)
    out = Ablate(basis, mean)(h)
    torch.testing.assert_close(out @ basis, (mean @ basis).expand_as(out @ basis))
    rest = torch.eye(D, dtype=torch.float64) - basis @ basis.T
    torch.testing.assert_close(out @ rest, h @ rest)
    direction = random_directions(1, D, seed=3)[0].double()[:, None]
    torch.testing.assert_close(Ablate(direction, mean)(h) @ direction, (mean @ direction).expand(3, 5, 1))


def test_random_draws_are_unit_and_seeded():
    dirs = random_directions(4, D, seed=0)
    assert all(abs(float(v.norm()) - 1) < 1e-6 for v in dirs)
    assert torch.equal(dirs[2], random_directions(4, D, seed=0)[2])
    assert not torch.equal(dirs[0], dirs[1])
    q = random_planes(2, D, seed=0)[1]
    torch.testing.assert_close(q.T @ q, torch.eye(2), atol=1e-6, rtol=0)


def test_a_matched_control_moves_h_as_far_as_its_edit_along_u(h):
    """Position by position, |matched(h) - h| = |edit(h) - h|, along the control's own direction."""
    q = plane_basis(np.random.default_rng(1).standard_normal((D, 2))).double()
    rotate = Rotate(q, torch.zeros(2, dtype=torch.float64), 90.0)
    u = unit(np.arange(D) - 3.0).double()
    moved = Matched(rotate, u)(h) - h
    size = (rotate(h) - h).norm(dim=-1, keepdim=True)
    torch.testing.assert_close(moved, size * u)
    assert size.std() > 0  # the size differs by position, and the control follows it
    torch.testing.assert_close(Matched(Rotate(q, torch.zeros(2, dtype=torch.float64), 0.0), u)(h), h)
