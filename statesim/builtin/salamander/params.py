"""Parameters of the salamander scenario: data recipe, evaluation drives, weight choice and target tolerances."""
from __future__ import annotations

from pydantic import Field, model_validator

from statesim.builtin.salamander.cpg import SalamanderCPGParams
from statesim.scenario import ScenarioParams

N_DRIVES = 2  # input units 0, 1: d_L, d_R


def steps(seconds: float, dt: float) -> int:
    """Number of samples (at least one) that ``seconds`` last at a sampling interval ``dt``."""
    return max(1, int(round(seconds / dt)))


class SalamanderParams(ScenarioParams):
    cpg: SalamanderCPGParams = Field(default_factory=SalamanderCPGParams,
                                     description="parameters of the ground-truth CPG (see the salamander_cpg cell)")
    train_trajectories: int = Field(64, gt=0, description="observed trajectories used for training")
    val_trajectories: int = Field(8, ge=0, description="observed trajectories used for validation")
    test_trajectories: int = Field(4, gt=0, description="held-out trajectories (held-out drive levels only)")
    trajectory_seconds: tuple[float, float] = Field((20.0, 40.0), description="length range of a trajectory, s")
    segment_seconds: tuple[float, float] = Field((3.0, 9.0), description="length range of a drive plateau, s")
    ramp_probability: float = Field(0.4, ge=0, le=1, description="chance that a plateau is reached by a ramp")
    turn_probability: float = Field(0.5, ge=0, le=1, description="chance that a plateau has d_L != d_R")
    max_turn: float = Field(1.5, ge=0, description="largest |d_L - d_R| of a turning plateau")
    edge_levels: list[float] | None = Field(None, description="drives where the behaviour changes abruptly, some "
                                            "plateaus are drawn near them; default: the CPG's stop/walk, walk/swim "
                                            "and swim/stop borders (1, 3, 5 for the default CPG)")
    edge_probability: float = Field(0.35, ge=0, le=1, description="chance that a plateau is drawn near an edge level")
    edge_width: float = Field(0.3, gt=0, description="half-width of the band around an edge level that "
                                                     "plateaus are drawn from (held-out bands still excluded)")
    mirror: bool = Field(True, description="also train on the left-right mirror image of every training "
                                           "trajectory (the CPG is left-right symmetric)")
    offset_loss_weight: float = Field(10.0, ge=0, description="weight of the loss on each output's mean over the "
                                      "scored part of a window (the small left-right offset that turns the body)")
    amplitude_loss_weight: float = Field(3.0, ge=0, description="weight of the loss on each output's standard "
                                         "deviation over the scored part of a window (phase-blind: keeps the "
                                         "oscillation's size where its phase cannot be known, e.g. on a restart)")
    window_seconds: float = Field(5.0, gt=0, description="length of a training window cut from a trajectory, s")
    window_stride_seconds: float = Field(2.5, gt=0, description="stride between training windows, s")
    warmup_seconds: float = Field(1.0, ge=0, description="observation warm-up at the start of every window, s")
    long_window_seconds: float | None = Field(
        None, gt=0, description="also cut windows this long (one warm-up, then the model runs on the drives "
                                "alone), so training sees the autonomous run well past window_seconds; meant for "
                                "truncated BPTT with k1 = the short window's steps and batching: by_length, "
                                "which keep every update's cost; a trajectory shorter than this gives none; "
                                "null: short windows only")
    long_window_stride_seconds: float | None = Field(None, gt=0, description="stride between long windows, s "
                                                     "(default: long_window_seconds, no overlap)")
    eval_levels: list[float] = Field(
        [0.5, 0.9, 1.1, 1.25, 1.75, 2.25, 2.75, 2.9, 3.1, 3.5, 4.0, 4.5, 4.9, 5.1, 5.5],
        description="constant drives evaluated; training plateaus avoid them (held out)")
    held_out_width: float = Field(0.05, ge=0, description="half-width of the band kept free around each eval level")
    turn_conditions: list[tuple[float, float]] = Field(
        [(4.5, 3.5), (3.5, 4.5), (2.3, 1.7), (1.7, 2.3)], description="(d_L, d_R) pairs for the turning test")
    eval_seconds: float = Field(120.0, gt=0, description="autonomous run length of the evaluation, s")
    measure_seconds: float = Field(20.0, gt=0, description="window at the end of a run where metrics are read, s")
    steer_base: tuple[float, float] = Field((2.0, 2.0), description="drives of the steering run outside clamps")
    steer_seconds: float = Field(70.0, gt=0, description="length of the steering run, s")
    forced_units: int = Field(4, gt=0, description="most hidden units clamped for neuron steering, per purpose "
                                                   "(the best set size up to this is chosen by a clamp sweep)")
    ablation_seconds: float = Field(15.0, gt=0, description="run length per unit ablation, s")
    ablation_drives: list[float] = Field([2.0, 4.0], description="drives of the ablation runs (walk, swim)")
    still_threshold: float = Field(0.05, gt=0, description="body amplitude (rad) below which the body counts as still")
    average_decay: float | None = Field(0.998, gt=0, lt=1, description="decay of the exponential moving average "
                                        "of the weights kept during training (a candidate for the final choice); "
                                        "null: no average")
    choose_from: float = Field(0.75, ge=0, le=1, description="candidate weights (raw and averaged) are snapshotted "
                               "every choose_every updates from this fraction of training.steps on; the one that "
                               "meets the most targets on the validation drives is kept")
    choose_every: int = Field(500, gt=0, description="updates between candidate snapshots")
    calibrate_amplitude: bool = Field(True, description="after the choice, scale the readout (body joints and "
                                      "limbs one gain each) so the oscillation's size matches the CPG's on the "
                                      "validation drives; the dynamics are unchanged (docs/salamander.md)")
    validation_levels: list[float] = Field(
        [0.8, 0.84, 1.18, 1.5, 2.0, 2.5, 2.82, 3.2, 3.75, 4.25, 4.75, 5.16, 5.2, 5.8],
        description="constant drives the final choice of weights is judged on (never eval_levels: each must lie "
                    "outside their held-out bands); 0.84 and 5.16 sit on the still side of the stop/walk and "
                    "swim/stop borders as close to the eval levels 0.9 and 5.1 as held_out_width allows")
    validation_turns: list[tuple[float, float]] = Field(
        [(4.3, 3.7), (3.7, 4.3), (2.45, 1.85), (1.85, 2.45)], description="(d_L, d_R) turning pairs of the choice")
    targets_frequency_hz: float = Field(0.05, gt=0, description="target: |f_rnn - f_cpg| per drive, Hz")
    targets_phase_lag: float = Field(0.1, gt=0, description="target: |lag - 2 pi / n| per segment while swimming, rad")
    targets_amplitude: float = Field(0.10, gt=0, description="target: relative amplitude error")
    targets_drift: float = Field(0.10, gt=0, description="target: relative amplitude drift over the evaluation run")
    targets_turn: float = Field(0.30, gt=0, description="target: relative error of the turning offset")

    @model_validator(mode="after")
    def _lengths(self) -> "SalamanderParams":
        if self.warmup_seconds >= self.window_seconds:
            raise ValueError("warmup_seconds must be shorter than window_seconds")
        if self.long_window_seconds is not None and self.long_window_seconds <= self.window_seconds:
            raise ValueError("long_window_seconds must be longer than window_seconds")
        if self.trajectory_seconds[0] < self.window_seconds:
            raise ValueError("trajectory_seconds must be at least window_seconds")
        if self.measure_seconds * 2 > self.eval_seconds:
            raise ValueError("eval_seconds must be at least twice measure_seconds")
        close = [v for v in self.validation_levels + [d for t in self.validation_turns for d in t]
                 if any(abs(v - e) <= self.held_out_width for e in self.eval_levels)]
        if close:
            raise ValueError(f"validation drives {close} lie within held_out_width of an eval level; the choice "
                             f"of weights must not see the evaluation's drives: move them or the eval_levels")
        return self
