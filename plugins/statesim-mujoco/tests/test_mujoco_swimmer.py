"""The MuJoCo swimmer on its own: the MJCF, the joint sign convention, the PD servo, physics sanity, the metrics.

Truths are independent of the code under test: ellipsoid volumes, rigid-body geometry, the PD law, momentum
conservation without a medium, and synthetic tracks with known speed and turn rate.
"""
from __future__ import annotations

import math

import mujoco
import numpy as np
import pytest

from statesim_mujoco.metrics import cycle_times, locomotion
from statesim_mujoco.swimmer import Swimmer, SwimmerParams, mjcf

DT = 0.02


def test_mjcf_loads_with_the_declared_structure_and_masses():
    p = SwimmerParams()
    model = mujoco.MjModel.from_xml_string(mjcf(p))
    assert model.nq == 3 + p.joints and model.nv == 3 + p.joints and model.nu == p.joints
    assert [model.body(k).name for k in range(1, model.nbody)] == [f"link{k}" for k in range(p.joints + 1)]
    volume = 4 / 3 * math.pi * (p.link_length / 2) * p.link_width * p.link_height
    np.testing.assert_allclose(model.body_mass[1:], p.body_density * volume, rtol=1e-6)
    assert model.opt.density == p.fluid_density and model.opt.viscosity == p.fluid_viscosity
    assert model.opt.gravity.tolist() == [0, 0, 0]
    # every link takes part in MuJoCo's ellipsoid fluid model; the floor (visual only) does not
    link_geoms = [g for g in range(model.ngeom) if model.geom(g).name.startswith("link")]
    assert len(link_geoms) == p.joints + 1 and all(model.geom_fluid[g, 0] == 1 for g in link_geoms)
    assert model.geom_fluid[model.geom("floor").id, 0] == 0


def test_positive_joint_angle_bends_the_body_to_the_left():
    p = SwimmerParams(joints=4)
    model = mujoco.MjModel.from_xml_string(mjcf(p))
    data = mujoco.MjData(model)
    q = 0.3
    data.qpos[model.joint("body1").qposadr[0]] = q
    mujoco.mj_kinematics(model, data)
    # joint 1 sits at x = -L/2; every link behind it is rotated by q about it, counter-clockwise seen from the
    # tail, i.e. the tail swings to +y (left of a head pointing along +x)
    L = p.link_length
    for k in range(1, p.joints + 1):
        along = (k - 0.5) * L  # distance of link k's centre behind the joint
        expected = np.array([-L / 2 - along * math.cos(q), along * math.sin(q)])
        np.testing.assert_allclose(data.xpos[model.body(f"link{k}").id, :2], expected, atol=1e-12)


def test_servo_applies_the_pd_law_within_its_torque_limit():
    p = SwimmerParams()
    sw = Swimmer(p, DT)
    d, m = sw.data[0], sw.model
    rng = np.random.default_rng(0)
    d.qpos[sw.joint_qpos] = rng.uniform(-0.5, 0.5, p.joints)
    d.qvel[sw.joint_qvel] = rng.uniform(-3, 3, p.joints)
    d.ctrl[:] = rng.uniform(-1, 1, p.joints)
    d.ctrl[0] = 5.0  # far off: saturates
    mujoco.mj_forward(m, d)
    law = p.kp * (d.ctrl - d.qpos[sw.joint_qpos]) - p.kv * d.qvel[sw.joint_qvel]
    np.testing.assert_allclose(d.actuator_force, np.clip(law, -p.max_torque, p.max_torque), rtol=1e-9, atol=1e-12)
    assert d.actuator_force[0] == pytest.approx(p.max_torque)


def test_pd_servo_reaches_a_held_posture_and_tracks_a_travelling_wave():
    p = SwimmerParams()
    sw = Swimmer(p, DT)
    target = np.full(p.joints, 0.3)
    for _ in range(int(2.0 / DT)):
        sw.step(target)
    # at rest the medium exerts no force, so the servo settles on its target
    np.testing.assert_allclose(sw.joint_angles()[0], target, atol=2e-3)

    sw.reset()
    amplitude, f = 0.8, 1.1
    errors, targets = [], []
    for t in range(int(4.0 / DT)):
        wave = amplitude * np.cos(2 * math.pi * f * t * DT - 2 * math.pi / 8 * np.arange(p.joints))
        sw.step(wave)
        if t * DT > 1.0:
            errors.append(sw.joint_angles()[0] - wave)
            targets.append(wave)
    rms, scale = np.sqrt(np.mean(np.square(errors))), np.sqrt(np.mean(np.square(targets)))
    assert rms < 0.15 * scale, (rms, scale)


def _undulate(params: SwimmerParams, seconds: float = 3.0) -> np.ndarray:
    sw = Swimmer(params, DT)
    com = []
    for t in range(int(seconds / DT)):
        ramp = min(1.0, t * DT / 0.5)  # no impulsive start
        sw.step(ramp * 0.6 * np.cos(2 * math.pi * 1.1 * t * DT - 2 * math.pi / 8 * np.arange(params.joints)))
        com.append(sw.com()[0])
    return np.array(com)


def test_without_a_medium_the_centre_of_mass_stays_and_in_water_the_body_swims_head_first():
    # Without a medium nothing external acts (no gravity, no contacts): momentum is conserved and the COM stays
    # (up to integration error; soft gains and a short step because nothing damps the servo there).
    soft = dict(kp=5.0, kv=0.2, timestep=0.0005)
    vacuum = _undulate(SwimmerParams(fluid_density=0.0, fluid_viscosity=0.0, **soft))
    water = _undulate(SwimmerParams(**soft))
    moved_vacuum = np.abs(vacuum - vacuum[0]).max()
    # a head-to-tail travelling wave pushes water backwards, so the body moves head first (+x)
    moved_water = water[-1, 0] - water[0, 0]
    assert moved_water > 0.2
    assert moved_vacuum < 0.01 * moved_water, (moved_vacuum, moved_water)


def test_cycle_times_of_a_sinusoid_are_its_upward_zero_crossings():
    f = 1.3
    t = np.arange(0, 5, DT)
    times = cycle_times(np.sin(2 * math.pi * f * t), DT)
    np.testing.assert_allclose(np.diff(times), 1 / f, atol=1e-3)
    np.testing.assert_allclose(times, np.arange(1, len(times) + 1) / f, atol=2e-3)
    assert len(cycle_times(1e-3 * np.sin(2 * math.pi * f * t), DT)) == 0  # below the hysteresis: still


def test_locomotion_recovers_speed_and_turn_rate_of_synthetic_tracks():
    f, n = 1.0, 8
    t = np.arange(0, 12, DT)
    phase = 2 * math.pi * f * t
    joints = np.stack([np.cos(phase - 2 * math.pi / n * k) for k in range(n)], 1)
    wobble = 0.02 * np.sin(phase)[:, None] * np.array([0.0, 1.0])
    straight = np.stack([0.3 * t, np.zeros_like(t)], 1) + wobble
    m = locomotion(straight, joints, DT, 2.0)
    assert m["speed_mps"] == pytest.approx(0.3, rel=1e-3)
    assert m["heading_deg"] == pytest.approx(0.0, abs=0.05) and m["turn_rate_deg_s"] == pytest.approx(0.0, abs=0.05)
    assert m["frequency_hz"] == pytest.approx(f, rel=1e-3)
    # a circle of radius 1 m travelled counter-clockwise at 0.25 rad/s: a left turn of 14.32 deg/s
    omega, radius = 0.25, 1.0
    circle = radius * np.stack([np.sin(omega * t), 1 - np.cos(omega * t)], 1) + wobble
    m = locomotion(circle, joints, DT, 2.0)
    assert m["turn_rate_deg_s"] == pytest.approx(math.degrees(omega), rel=1e-2)
    assert m["speed_mps"] == pytest.approx(radius * omega, rel=1e-2)
    mirrored = locomotion(circle * np.array([1.0, -1.0]), joints, DT, 2.0)
    assert mirrored["turn_rate_deg_s"] == pytest.approx(-math.degrees(omega), rel=1e-2)
