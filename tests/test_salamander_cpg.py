"""The salamander CPG cell against the closed forms of its equations and its known gaits (Ijspeert 2007)."""
import math

import numpy as np
import pytest
import torch

from statesim.builtin.salamander import signals
from statesim.builtin.salamander.cpg import SalamanderCPG, SalamanderCPGParams
from statesim.engine import unroll

DT = 0.02


def body_R(d):
    return 0.065 * d + 0.196


def simulate(drives, seconds=30.0, settle=10.0, seed=0, amplitude=0.3, **params):
    """Constant drives ``[(d_L, d_R), ...]`` from random phases; outputs after ``settle`` seconds."""
    cell = SalamanderCPG(2, **params).double()
    steps = int(round(seconds / DT))
    x = torch.tensor(drives, dtype=torch.float64).unsqueeze(0).expand(steps, -1, -1).contiguous()
    gen = torch.Generator().manual_seed(seed)
    state = {k: v.double() for k, v in cell.random_state(len(drives), gen, amplitude=amplitude).items()}
    with torch.no_grad():
        traj = unroll(cell, x, state)
    return traj.outputs[int(round(settle / DT)):].numpy(), traj.final_state


@pytest.fixture(scope="module")
def gaits():
    levels = [0.0, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.0]
    out, state = simulate([(d, d) for d in levels], seconds=30.0, settle=12.0)
    return dict(zip(levels, np.moveaxis(out, 1, 0))), state


def test_registered_and_built_from_yaml_params(builtin_host):
    entry = builtin_host.registry.get("cell", "salamander_cpg").record
    params = entry.params.model_validate({"dt": 0.01, "w_body": 5.0, "body": {"d_low": 1, "d_high": 4,
                                          "nu_gain": 0.1, "nu_offset": 0.2, "R_gain": 0.1, "R_offset": 0.1}})
    cell = entry.cls.from_params(2, params)
    assert cell.p.dt == 0.01 and cell.p.body.d_high == 4
    assert cell.W[1, 0] == 5.0 and cell.state_spec == {"theta": (20,), "r": (20,), "dr": (20,)}
    assert cell.output_size == 12
    with pytest.raises(ValueError, match="d_high"):
        entry.params.model_validate({"limb": {"d_low": 3, "d_high": 1, "nu_gain": 0.2, "nu_offset": 0,
                                              "R_gain": 0.1, "R_offset": 0.1}})
    from statesim.errors import ShapeError

    with pytest.raises(ShapeError, match="input_size must be 2"):
        SalamanderCPG(3)


def test_uncoupled_oscillator_matches_closed_form():
    """With every coupling off, theta grows at 2 pi nu and r follows the critically damped solution."""
    p = dict(w_body=0.0, w_contra=0.0, w_limb_body=0.0, w_limb=0.0, wrap_phase=False, dt=0.01)
    cell = SalamanderCPG(2, **p).double()
    d, steps = 2.0, 150
    state = {k: v.double() for k, v in cell.random_state(1, torch.Generator().manual_seed(1), amplitude=0.1).items()}
    theta0 = state["theta"].clone()
    x = torch.full((steps, 1, 2), d, dtype=torch.float64)
    traj = unroll(cell, x, state, return_states=True)
    t = torch.arange(1, steps + 1, dtype=torch.float64) * 0.01
    nu_body, nu_limb = 0.2 * d + 0.3, 0.2 * d
    R_body, R_limb = body_R(d), 0.131 * d + 0.131
    theta = traj.states["theta"][:, 0]
    assert torch.allclose(theta[:, 0], theta0[0, 0] + 2 * math.pi * nu_body * t, atol=1e-9)
    assert torch.allclose(theta[:, -1], theta0[0, -1] + 2 * math.pi * nu_limb * t, atol=1e-9)
    a = 20.0
    for index, R in ((0, R_body), (-1, R_limb)):
        exact = R - (R - 0.1) * (1 + a / 2 * t) * torch.exp(-a / 2 * t)
        assert torch.allclose(traj.states["r"][:, 0, index], exact, atol=1e-6)


def test_rk4_is_fourth_order():
    """Halving the step divides the error after one second by about 2**4."""
    def run(substeps):
        cell = SalamanderCPG(2, substeps=substeps, dt=0.01, wrap_phase=False).double()
        start = cell.random_state(1, torch.Generator().manual_seed(3), amplitude=0.4)
        state = {k: v.double() for k, v in start.items()}
        x = torch.tensor([[[2.0, 4.0]]], dtype=torch.float64).expand(100, 1, 2)
        return unroll(cell, x, state).final_state["theta"]

    reference = run(64)
    e1, e2 = (run(1) - reference).abs().max(), (run(2) - reference).abs().max()
    assert 12 < float(e1 / e2) < 20


def test_still_outside_the_drive_range(gaits):
    outputs, state = gaits
    for d in (0.0, 0.5, 5.5, 6.0):
        assert np.abs(outputs[d]).max() < 1e-3, d
    assert float(state["r"].abs().max(-1).values[[0, 1, 6, 7]].max()) < 1e-3


def test_walking_frequency_limbs_and_standing_wave(gaits):
    outputs, _ = gaits
    for d in (1.5, 2.5):
        body, limbs = outputs[d][:, :8], outputs[d][:, 8:]
        assert signals.frequency(body[:, 0], DT) == pytest.approx(0.2 * d, abs=0.005)
        assert signals.frequency(body[:, 7], DT) == pytest.approx(0.2 * d, abs=0.005)
        assert signals.frequency(limbs[:, 0], DT) == pytest.approx(0.2 * d, abs=0.005)
        assert signals.amplitude(limbs) == pytest.approx(0.131 * d + 0.131, rel=0.01)
        lags = np.abs(signals.phase_lags(body, DT))
        assert lags[3] > 2.0, lags  # the jump between segments 4 and 5
        assert np.delete(lags, 3).max() < 0.6, lags  # the girdles move nearly in phase
        assert signals.amplitude(body) == pytest.approx(2 * body_R(d), rel=0.01)


def test_swimming_frequency_travelling_wave_and_still_limbs(gaits):
    outputs, _ = gaits
    for d in (3.5, 4.5):
        body, limbs = outputs[d][:, :8], outputs[d][:, 8:]
        assert signals.frequency(body[:, 0], DT) == pytest.approx(0.2 * d + 0.3, abs=0.005)
        np.testing.assert_allclose(signals.phase_lags(body, DT), 2 * math.pi / 8, atol=0.02)
        assert signals.amplitude(body) == pytest.approx(2 * body_R(d), rel=0.01)
        assert np.abs(limbs).max() < 1e-3


def test_walk_to_swim_frequency_jump_at_three():
    out, _ = simulate([(2.95, 2.95), (3.05, 3.05)], seconds=30.0, settle=15.0)
    walk, swim = (signals.frequency(out[:, b, 0], DT) for b in (0, 1))
    assert walk == pytest.approx(0.59, abs=0.005) and swim == pytest.approx(0.91, abs=0.005)


def test_unequal_drives_shift_the_mean_body_angle():
    """The mean of r_L (1 + cos) - r_R (1 + cos) is R_L - R_R = 0.065 (d_L - d_R) once both sides lock."""
    out, _ = simulate([(4.5, 3.5), (3.5, 4.5), (2.3, 1.7)], seconds=25.0, settle=10.0)
    for b, (dl, dr) in enumerate([(4.5, 3.5), (3.5, 4.5), (2.3, 1.7)]):
        body = out[:, b, :8]
        periods = 1 / signals.frequency(body[:, 0], DT)
        whole = int(round(math.floor((len(body) * DT) / periods) * periods / DT))
        assert signals.mean_offset(body[:whole]) == pytest.approx(0.065 * (dl - dr), abs=0.004)


def test_params_model_has_the_paper_defaults():
    p = SalamanderCPGParams()
    assert (p.a, p.w_body, p.w_contra, p.w_limb_body, p.w_limb) == (20.0, 10.0, 10.0, 30.0, 10.0)
    assert p.phi_body == pytest.approx(2 * math.pi / 8) and p.phi_contra == pytest.approx(math.pi)
    assert (p.body.nu_gain, p.body.nu_offset, p.body.R_gain, p.body.R_offset) == (0.2, 0.3, 0.065, 0.196)
    assert (p.limb.d_low, p.limb.d_high, p.limb.R_gain, p.limb.R_offset) == (1.0, 3.0, 0.131, 0.131)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_behaviour_simulate_leaves_the_callers_cpg_as_it_was(dtype):
    """simulate integrates in float64 on its own copy: the caller's CPG keeps its dtype and its values."""
    from statesim.builtin.salamander.behaviour import simulate as simulate_behaviour

    cpg = SalamanderCPG(2).to(dtype)
    before = {k: v.clone() for k, v in cpg.state_dict().items()}
    drives = torch.full((20, 2, 2), 3.0)
    out = simulate_behaviour(cpg, drives)
    assert out.dtype == torch.float32
    after = cpg.state_dict()
    assert set(after) == set(before)
    for key, value in after.items():
        assert value.dtype == before[key].dtype and torch.equal(value, before[key]), key
    # the same numbers as integrating a float64 CPG directly
    reference = simulate_behaviour(SalamanderCPG(2).double(), drives)
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
