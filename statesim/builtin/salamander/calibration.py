"""Amplitude calibration of the kept weights: one output gain for the body joints and one for the limbs.

A model trained by MSE on windows that run long after their warm-up comes out with an oscillation a few per
cent smaller than the CPG's at every drive: where the phase is uncertain, MSE prefers a smaller sine (for a
phase error phi it is minimised at A cos phi), and the phase-blind amplitude term only reduces that bias.
Over the ten runs of docs/salamander.md the kept weights' walking and swimming amplitudes were 0 to 15 %
small at every evaluation drive, a bias in one direction that no choice among candidates removes.

The readout (the model's linear head) is never fed back: after the warm-up the model runs on the drives
alone. Scaling the readout about its resting output therefore sets the oscillation's size and leaves the
dynamics untouched (frequency, phase lags, stillness and drift stay exactly as they were). The gain is the
minimax one on the validation drives, the drives the weights were chosen on (never the evaluation's):
``2 / (min ratio + max ratio)`` over their amplitude ratios, which makes the largest relative error there
as small as one gain can.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from statesim.builtin.salamander.cpg import gait_borders
from statesim.builtin.salamander.evaluation import Runs, condition_rows, rounded
from statesim.builtin.salamander.rollout import Rig


def minimax_gain(ratios: list[float]) -> float:
    """The gain ``g`` minimising ``max |g r - 1|`` over amplitude ratios ``r`` (1 when there are none).

    >>> minimax_gain([0.9, 0.8]), minimax_gain([])
    (1.176470588235294, 1.0)
    """
    return 2.0 / (min(ratios) + max(ratios)) if ratios else 1.0


@torch.no_grad()
def calibrate_amplitude(rig: Rig, validation: Runs) -> dict[str, Any]:
    """Scale the model's readout so its oscillation's size matches the CPG's on the validation runs."""
    p, model, n = rig.params, rig.model, rig.segments
    head = model.head
    if not isinstance(head, nn.Linear):
        return {"applied": False, "note": f"the model's head is {type(head).__name__}, not a linear readout"}
    rows, learned, _, late = condition_rows(rig, *validation)
    levels = len(p.validation_levels)
    start, _, stop = gait_borders(rig.cpg.p)
    moving = [r for r in rows[:levels] if start <= r["d_L"] <= stop and r["rnn"]["amplitude"] > p.still_threshold]
    body = {r["d_L"]: r["rnn"]["amplitude"] / r["cpg"]["amplitude"] for r in moving}
    limbs = {r["d_L"]: r["rnn"]["limb_amplitude"] / r["cpg"]["limb_amplitude"] for r in moving
             if min(r["rnn"]["limb_amplitude"], r["cpg"]["limb_amplitude"]) > 1e-3}
    body_gain, limb_gain = minimax_gain(list(body.values())), minimax_gain(list(limbs.values()))
    # the resting output (mean over the constant-drive runs' measure windows) stays where it is
    centre = learned[late, :levels].mean(dim=(0, 1)).to(head.weight)
    gain = torch.tensor([body_gain] * n + [limb_gain] * (head.out_features - n)).to(head.weight)
    head.weight.mul_(gain[:, None])
    if head.bias is not None:
        head.bias.copy_(gain * head.bias + (1 - gain) * centre)
    return {"applied": True, "body_gain": rounded(body_gain, 5), "limb_gain": rounded(limb_gain, 5),
            "validation_amplitude_ratios": {"body": {str(k): rounded(v) for k, v in body.items()},
                                            "limbs": {str(k): rounded(v) for k, v in limbs.items()}},
            "method": "the readout scaled about its resting output by the minimax gain 2 / (min + max) of the "
                      "RNN/CPG amplitude ratios at the moving validation drives (body joints and limbs each "
                      "one gain); the readout is not fed back, so the dynamics are unchanged"}
