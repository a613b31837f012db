"""The MuJoCo swimmer: an MJCF chain of ellipsoid links in a viscous medium, PD-controlled joints.

The body lies in the horizontal plane: a planar root (slide x, slide y, hinge yaw) on the head link and one
hinge per body joint between consecutive links, head first. A joint angle is positive when the body bends
to the LEFT (the tail swings to +y while the head points along +x), the CPG's sign convention for its body
angles ``x_i - x_{i+n}`` (left minus right). Fluid forces come from MuJoCo's ellipsoid fluid model
(``fluidshape="ellipsoid"``: added mass, viscous and quadratic drag, Kutta and Magnus lift) with the
medium's density and viscosity; gravity and contacts are off (a neutrally buoyant body far from walls).
Each joint has an actuator applying ``kp (q* - q) - kv q'`` (a PD position servo) with torque limits;
MuJoCo's ``implicitfast`` integrator treats the damping term implicitly, so stiff gains stay stable.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class SwimmerParams(BaseModel):
    """Geometry, medium and servo of the swimmer (SI units)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    joints: int = Field(8, ge=1, description="body hinge joints (links = joints + 1, head first)")
    link_length: float = Field(0.1, gt=0, description="length of one link, m")
    link_width: float = Field(0.02, gt=0, description="lateral semi-axis of a link's ellipsoid, m")
    link_height: float = Field(0.03, gt=0, description="vertical semi-axis of a link's ellipsoid, m")
    body_density: float = Field(1000.0, gt=0, description="density of the links, kg/m^3 (1000: neutrally buoyant)")
    fluid_density: float = Field(1000.0, ge=0, description="density of the medium, kg/m^3 (water: 1000)")
    fluid_viscosity: float = Field(0.0009, ge=0, description="dynamic viscosity of the medium, Pa s (water: 0.0009)")
    timestep: float = Field(0.002, gt=0, description="physics step, s (a control tick is several of these)")
    kp: float = Field(50.0, gt=0, description="servo stiffness, N m / rad")
    kv: float = Field(1.0, ge=0, description="servo damping, N m s / rad")
    max_torque: float = Field(10.0, gt=0, description="servo torque limit, N m")
    joint_damping: float = Field(0.01, ge=0, description="passive joint damping, N m s / rad")
    armature: float = Field(0.0, ge=0, description="joint armature (rotor inertia), kg m^2; it is not a body, so "
                                                 "anything but 0 breaks momentum conservation of the free swimmer")
    joint_gain: float = Field(1.0, gt=0, description="joint target = joint_gain x the controller's body angle")


def mjcf(p: SwimmerParams) -> str:
    """The MJCF (XML) text of the swimmer."""
    half = p.link_length / 2
    ellipsoid = f'type="ellipsoid" size="{half:g} {p.link_width:g} {p.link_height:g}"'
    colors = ["0.85 0.55 0.2 1", "0.3 0.3 0.3 1"]
    lines = [
        '<mujoco model="salamander_swimmer">',
        '  <compiler angle="radian"/>',
        f'  <option timestep="{p.timestep:g}" density="{p.fluid_density:g}" viscosity="{p.fluid_viscosity:g}" '
        'integrator="implicitfast" gravity="0 0 0">',
        '    <flag contact="disable"/>',
        '  </option>',
        '  <visual><global offwidth="640" offheight="480"/></visual>',
        '  <default>',
        f'    <geom {ellipsoid} density="{p.body_density:g}" fluidshape="ellipsoid" contype="0" conaffinity="0"/>',
        f'    <joint type="hinge" axis="0 0 -1" damping="{p.joint_damping:g}" armature="{p.armature:g}"/>',
        '  </default>',
        '  <asset>',
        '    <texture name="grid" type="2d" builtin="checker" rgb1="0.2 0.3 0.4" rgb2="0.25 0.35 0.45" '
        'width="256" height="256"/>',
        '    <material name="grid" texture="grid" texrepeat="8 8"/>',
        '  </asset>',
        '  <worldbody>',
        '    <light pos="0 0 3" dir="0 0 -1" directional="true"/>',
        '    <geom name="floor" type="plane" size="0 0 0.05" pos="0 0 -0.2" material="grid" fluidshape="none"/>',
        '    <body name="link0" pos="0 0 0">',
        '      <joint name="root_x" type="slide" axis="1 0 0" damping="0" armature="0"/>',
        '      <joint name="root_y" type="slide" axis="0 1 0" damping="0" armature="0"/>',
        '      <joint name="root_yaw" type="hinge" axis="0 0 1" damping="0" armature="0"/>',
        f'      <geom name="link0" rgba="{colors[0]}"/>',
        '      <camera name="track" mode="trackcom" pos="0 -0.35 1.3" xyaxes="1 0 0 0 0.96 0.28"/>',
    ]
    indent = "      "
    for k in range(1, p.joints + 1):
        # The child hangs behind its parent; its joint sits on their shared boundary. The axis is -z so that a
        # positive angle swings the tail to +y: a bend to the left.
        lines += [f'{indent}<body name="link{k}" pos="{-p.link_length:g} 0 0">',
                  f'{indent}  <joint name="body{k}" pos="{half:g} 0 0"/>',
                  f'{indent}  <geom name="link{k}" rgba="{colors[k % 2]}"/>']
        indent += "  "
    for k in range(p.joints, 0, -1):
        indent = indent[:-2]
        lines.append(f"{indent}</body>")
    lines += ['    </body>', '  </worldbody>', '  <actuator>']
    for k in range(1, p.joints + 1):
        # general actuator = PD servo: force = kp ctrl - kp q - kv q'
        lines.append(f'    <general name="servo{k}" joint="body{k}" gainprm="{p.kp:g}" biastype="affine" '
                     f'biasprm="0 {-p.kp:g} {-p.kv:g}" forcelimited="true" '
                     f'forcerange="{-p.max_torque:g} {p.max_torque:g}"/>')
    lines += ['  </actuator>', '</mujoco>']
    return "\n".join(lines) + "\n"


class Swimmer:
    """A batch of independent swimmers (one MuJoCo model, one ``MjData`` each) advanced one control tick at a time."""

    def __init__(self, params: SwimmerParams, control_dt: float, batch_size: int = 1) -> None:
        import mujoco

        self.mujoco = mujoco
        self.p = params
        self.model = mujoco.MjModel.from_xml_string(mjcf(params))
        self.substeps = max(1, int(round(control_dt / params.timestep)))
        if abs(self.substeps * params.timestep - control_dt) > 1e-9:
            raise ValueError(f"the control period {control_dt} s must be a whole number of physics steps of "
                             f"{params.timestep} s")
        self.control_dt = control_dt
        self.root = self.model.body("link0").id
        self.joint_qpos = np.array([self.model.joint(f"body{k}").qposadr[0] for k in range(1, params.joints + 1)])
        self.joint_qvel = np.array([self.model.joint(f"body{k}").dofadr[0] for k in range(1, params.joints + 1)])
        self.data = [mujoco.MjData(self.model) for _ in range(batch_size)]
        self.reset()

    @property
    def batch_size(self) -> int:
        return len(self.data)

    def reset(self) -> None:
        """Every swimmer straight at the origin, at rest, head along +x."""
        for d in self.data:
            self.mujoco.mj_resetData(self.model, d)
            self.mujoco.mj_forward(self.model, d)
        self.t = 0

    def step(self, body_angles: np.ndarray) -> None:
        """One control tick: joint targets ``joint_gain x body_angles [B, joints]``, held for the tick
        (zero-order hold)."""
        targets = self.p.joint_gain * np.asarray(body_angles, dtype=np.float64).reshape(self.batch_size, -1)
        for d, target in zip(self.data, targets):
            d.ctrl[:] = target
            self.mujoco.mj_step(self.model, d, nstep=self.substeps)
        self.t += 1

    def joint_angles(self) -> np.ndarray:
        """Measured joint angles ``[B, joints]`` (rad)."""
        return np.stack([d.qpos[self.joint_qpos] for d in self.data])

    def body_signals(self) -> np.ndarray:
        """Measured joint angles in the controller's units (divided by ``joint_gain``), ``[B, joints]``."""
        return self.joint_angles() / self.p.joint_gain

    def com(self) -> np.ndarray:
        """Centre of mass of each whole body in the plane, ``[B, 2]`` (m)."""
        return np.stack([d.subtree_com[self.root, :2].copy() for d in self.data])

    def qpos(self) -> np.ndarray:
        """Full generalised positions ``[B, nq]`` (for replay and rendering)."""
        return np.stack([d.qpos.copy() for d in self.data])

    def torques(self) -> np.ndarray:
        """Servo torques applied in the last physics step ``[B, joints]`` (N m)."""
        return np.stack([d.actuator_force.copy() for d in self.data])


def describe(p: SwimmerParams) -> dict[str, Any]:
    """Summary numbers of the model for results.json."""
    import mujoco

    model = mujoco.MjModel.from_xml_string(mjcf(p))
    return {"links": p.joints + 1, "joints": p.joints, "body_length_m": round((p.joints + 1) * p.link_length, 4),
            "mass_kg": round(float(model.body_mass.sum()), 4), "timestep_s": p.timestep,
            "fluid": {"model": "ellipsoid", "density": p.fluid_density, "viscosity": p.fluid_viscosity},
            "servo": {"kp": p.kp, "kv": p.kv, "max_torque": p.max_torque}, "mujoco": mujoco.__version__}


def wrap(angle: float) -> float:
    """An angle in (-pi, pi]."""
    return math.atan2(math.sin(angle), math.cos(angle))
