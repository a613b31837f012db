"""Cell ``salamander_cpg``: the amplitude-controlled phase-oscillator CPG of Ijspeert et al. (2007, Science).

Oscillators: ``n`` left body, ``n`` right body (index ``i`` and ``i + n`` sit on the same segment),
then the limbs LF, RF, LH, RH. Each oscillator obeys

    theta_i' = 2 pi nu_i + sum_j r_j w_ij sin(theta_j - theta_i - phi_ij)
    r_i''    = a (a/4 (R_i - r_i) - r_i')
    x_i      = r_i (1 + cos theta_i)

with ``nu`` and ``R`` set by the drive through the saturation functions of Table S1 (zero outside
their range). Left oscillators (body and limbs) get ``d_L``, right ones ``d_R``. One engine tick
advances ``substeps`` classic RK4 steps of ``dt / substeps`` seconds.

Outputs: the ``n`` body joint angles ``x_i - x_{i+n}`` (left minus right), then the four limb
signals ``x`` of LF, RF, LH, RH. The cell has no trainable parameters; it is a ground-truth
dynamical system run by the same engine that trains RNNs.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import BaseModel, Field, model_validator
from torch import Tensor

from statesim.cell import Cell, CellParams, State
from statesim.hookimpl import hookimpl
from statesim.registry import Registration

LIMB_NAMES = ("LF", "RF", "LH", "RH")


class Saturation(CellParams):
    """Drive-to-oscillator mapping: inside ``[d_low, d_high]`` nu = nu_gain d + nu_offset, R = R_gain d + R_offset."""

    d_low: float = Field(..., description="lowest drive that makes the oscillator run")
    d_high: float = Field(..., description="highest drive that makes the oscillator run")
    nu_gain: float = Field(..., description="Hz per unit of drive")
    nu_offset: float = Field(..., description="Hz at zero drive (extrapolated)")
    R_gain: float = Field(..., description="amplitude per unit of drive")
    R_offset: float = Field(..., description="amplitude at zero drive (extrapolated)")


def _body_saturation() -> Saturation:
    return Saturation(d_low=1.0, d_high=5.0, nu_gain=0.2, nu_offset=0.3, R_gain=0.065, R_offset=0.196)


def _limb_saturation() -> Saturation:
    return Saturation(d_low=1.0, d_high=3.0, nu_gain=0.2, nu_offset=0.0, R_gain=0.131, R_offset=0.131)


class SalamanderCPGParams(CellParams):
    segments: int = Field(8, ge=2, description="body segments (joints); forelimbs couple to the first half, "
                                               "hindlimbs to the second")
    dt: float = Field(0.02, gt=0, description="seconds per engine tick (0.02 = 50 Hz)")
    substeps: int = Field(1, ge=1, description="RK4 steps per tick (step size dt / substeps)")
    a: float = Field(20.0, gt=0, description="amplitude convergence rate a")
    w_body: float = Field(10.0, ge=0, description="coupling between neighbouring body oscillators of one side")
    phi_body: float = Field(2 * math.pi / 8, description="phase bias between neighbours (+ descending, "
                                                         "- ascending), rad; 2 pi / 8 gives one wave per body")
    w_contra: float = Field(10.0, ge=0, description="left-right coupling of body oscillators of one segment")
    phi_contra: float = Field(math.pi, description="left-right phase bias, rad")
    w_limb_body: float = Field(30.0, ge=0, description="one-way coupling from a limb to the body oscillators "
                                                       "of its girdle and side")
    phi_limb_body: float = Field(0.0, description="phase bias of limb-to-body couplings, rad")
    w_limb: float = Field(10.0, ge=0, description="coupling between neighbouring limbs (left-right, fore-hind)")
    phi_limb: float = Field(math.pi, description="phase bias between neighbouring limbs, rad")
    body: Saturation = Field(default_factory=_body_saturation, description="drive saturation of body oscillators")
    limb: Saturation = Field(default_factory=_limb_saturation, description="drive saturation of limb oscillators")
    wrap_phase: bool = Field(True, description="keep theta in [0, 2 pi) (the dynamics only use phase differences "
                                               "and cosines, so this changes nothing but keeps numbers small)")

    @model_validator(mode="after")
    def _ranges(self) -> "SalamanderCPGParams":
        for name in ("body", "limb"):
            sat = getattr(self, name)
            if sat.d_high <= sat.d_low:
                raise ValueError(f"{name}.d_high must be greater than {name}.d_low")
        return self


def coupling_matrices(p: SalamanderCPGParams) -> tuple[Tensor, Tensor]:
    """Weights ``W[i, j]`` (influence of oscillator j on i) and phase biases ``Phi[i, j]``."""
    n = p.segments
    total = 2 * n + 4
    W = torch.zeros(total, total, dtype=torch.float64)
    Phi = torch.zeros(total, total, dtype=torch.float64)

    def link(i: int, j: int, w: float, phi: float) -> None:
        W[i, j], Phi[i, j] = w, phi

    for side in (0, n):
        for k in range(n):
            i = side + k
            if k > 0:
                link(i, i - 1, p.w_body, p.phi_body)       # descending: i lags its rostral neighbour
            if k < n - 1:
                link(i, i + 1, p.w_body, -p.phi_body)      # ascending
    for k in range(n):
        link(k, k + n, p.w_contra, p.phi_contra)
        link(k + n, k, p.w_contra, p.phi_contra)
    lf, rf, lh, rh = range(2 * n, 2 * n + 4)
    front = range(n // 2)
    hind = range(n // 2, n)
    for limb, side, girdle in ((lf, 0, front), (rf, n, front), (lh, 0, hind), (rh, n, hind)):
        for k in girdle:
            link(side + k, limb, p.w_limb_body, p.phi_limb_body)
    for i, j in ((lf, rf), (lh, rh), (lf, lh), (rf, rh)):
        link(i, j, p.w_limb, p.phi_limb)
        link(j, i, p.w_limb, p.phi_limb)
    return W, Phi


def saturate(drive: Tensor, sat: Saturation) -> tuple[Tensor, Tensor]:
    """Intrinsic frequency (Hz) and amplitude for a drive; both zero outside ``[d_low, d_high]``."""
    inside = (drive >= sat.d_low) & (drive <= sat.d_high)
    nu = torch.where(inside, sat.nu_gain * drive + sat.nu_offset, torch.zeros_like(drive))
    R = torch.where(inside, sat.R_gain * drive + sat.R_offset, torch.zeros_like(drive))
    return nu, R


def gait_borders(p: SalamanderCPGParams) -> tuple[float, float, float]:
    """Drives where the behaviour changes abruptly: the body starts, the limbs stop (walk to swim), the body stops."""
    return p.body.d_low, p.limb.d_high, p.body.d_high


class SalamanderCPG(Cell):
    """Ijspeert et al. (2007) salamander CPG: 2 x ``segments`` body and 4 limb phase oscillators, RK4."""

    Params = SalamanderCPGParams
    # Buffers registered in __init__ (register_buffer), declared so they read back as tensors.
    W: Tensor
    Phi: Tensor
    left: Tensor
    is_limb: Tensor

    def __init__(self, input_size: int = 2, **params: Any) -> None:
        super().__init__(input_size)
        if self.input_size != 2:
            from statesim.errors import ShapeError

            raise ShapeError(f"salamander_cpg takes the two drives (d_L, d_R) as input, so input_size must be 2, "
                             f"got {input_size}.")
        self.p = SalamanderCPGParams(**params)
        W, Phi = coupling_matrices(self.p)
        self.register_buffer("W", W.to(torch.get_default_dtype()))
        self.register_buffer("Phi", Phi.to(torch.get_default_dtype()))
        n = self.p.segments
        left = torch.tensor([1.0] * n + [0.0] * n + [1.0, 0.0, 1.0, 0.0])
        self.register_buffer("left", left)  # 1 where an oscillator gets d_L
        self.register_buffer("is_limb", torch.tensor([0.0] * (2 * n) + [1.0] * 4))

    @classmethod
    def from_params(cls, input_size: int, params: BaseModel) -> "SalamanderCPG":
        return cls(input_size, **params.model_dump())

    @property
    def oscillators(self) -> int:
        return 2 * self.p.segments + 4

    @property
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        size = (self.oscillators,)
        return {"theta": size, "r": size, "dr": size}

    @property
    def output_size(self) -> int:
        return self.p.segments + 4

    def targets(self, drives: Tensor) -> tuple[Tensor, Tensor]:
        """Angular frequency ``2 pi nu`` and amplitude ``R`` of every oscillator for drives ``[B, 2]``."""
        left = self.left.to(drives.dtype)
        d = drives[:, :1] * left + drives[:, 1:2] * (1 - left)  # [B, oscillators]
        limb = self.is_limb.to(drives.dtype).bool()
        nu_b, R_b = saturate(d, self.p.body)
        nu_l, R_l = saturate(d, self.p.limb)
        nu, R = torch.where(limb, nu_l, nu_b), torch.where(limb, R_l, R_b)
        return 2 * math.pi * nu, R

    def derivatives(self, theta: Tensor, r: Tensor, dr: Tensor, omega: Tensor, R: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor]:
        """Right-hand side of the ODE for a batch of states ``[B, oscillators]``."""
        W, Phi = self.W.to(theta.dtype), self.Phi.to(theta.dtype)
        diff = theta.unsqueeze(1) - theta.unsqueeze(2) - Phi  # [B, i, j]: theta_j - theta_i - phi_ij
        coupling = (W * r.unsqueeze(1) * torch.sin(diff)).sum(-1)
        a = self.p.a
        return omega + coupling, dr, a * (a / 4 * (R - r) - dr)

    def transition(self, projected_x: Tensor, state: State) -> tuple[Tensor, State]:
        omega, R = self.targets(projected_x)
        theta, r, dr = state["theta"], state["r"], state["dr"]
        h = self.p.dt / self.p.substeps
        f = self.derivatives
        for _ in range(self.p.substeps):
            k1 = f(theta, r, dr, omega, R)
            k2 = f(theta + h / 2 * k1[0], r + h / 2 * k1[1], dr + h / 2 * k1[2], omega, R)
            k3 = f(theta + h / 2 * k2[0], r + h / 2 * k2[1], dr + h / 2 * k2[2], omega, R)
            k4 = f(theta + h * k3[0], r + h * k3[1], dr + h * k3[2], omega, R)
            theta = theta + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
            r = r + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
            dr = dr + h / 6 * (k1[2] + 2 * k2[2] + 2 * k3[2] + k4[2])
        if self.p.wrap_phase:
            theta = torch.remainder(theta, 2 * math.pi)
        return self.read_out(theta, r), {"theta": theta, "r": r, "dr": dr}

    def read_out(self, theta: Tensor, r: Tensor) -> Tensor:
        """Body joint angles ``x_i - x_{i+n}`` and the limb signals ``x`` from phases and amplitudes."""
        n = self.p.segments
        x = r * (1 + torch.cos(theta))
        return torch.cat([x[:, :n] - x[:, n:2 * n], x[:, 2 * n:]], dim=-1)

    def random_state(self, batch_size: int, generator: torch.Generator | None = None, *,
                     amplitude: float = 0.0) -> State:
        """Uniform random phases, amplitudes ``amplitude`` and zero amplitude velocity."""
        size = (batch_size, self.oscillators)
        theta = torch.rand(size, generator=generator) * (2 * math.pi)
        return {"theta": theta.to(self.W.device, self.W.dtype),
                "r": torch.full(size, amplitude, device=self.W.device, dtype=self.W.dtype),
                "dr": torch.zeros(size, device=self.W.device, dtype=self.W.dtype)}

    def output_names(self) -> list[str]:
        """Names of the outputs, in order."""
        return [f"body{k + 1}" for k in range(self.p.segments)] + [f"limb_{name}" for name in LIMB_NAMES]


@hookimpl
def statesim_cells() -> list[Registration]:
    """Register the CPG cell."""
    return [Registration("salamander_cpg", SalamanderCPG, SalamanderCPGParams,
                         "Ijspeert et al. (2007) salamander spinal CPG: phase oscillators driven by d_L, d_R (RK4)")]
