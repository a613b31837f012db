"""Dynamics analysis of any trained cell: fixed and slow points, linearisation, Lyapunov spectra, limit cycles.

Everything works through the cell contract alone (``(x_t, state) -> (y_t, state)`` and named state parts),
so it applies to built-in, stacked and third-party cells alike. ``statesim analyze RUN`` runs it on a
finished run (:func:`statesim.analysis.report.analyze_run`); ``docs/dynamics.md`` explains the method.
"""
from statesim.analysis.fixed_points import FixedPointOptions, FixedPoints, find_fixed_points, sample_starts
from statesim.analysis.linearize import LocalLinear, classify, eigenvalues_by_modulus, linearize, time_constants
from statesim.analysis.lyapunov import (LimitCycle, LyapunovSpectrum, dominant_period, kaplan_yorke, limit_cycle,
                                        lyapunov_spectrum)
from statesim.analysis.stepmap import StepMap, float64_copy

__all__ = ["FixedPointOptions", "FixedPoints", "LimitCycle", "LocalLinear", "LyapunovSpectrum", "StepMap",
           "classify", "dominant_period", "eigenvalues_by_modulus", "find_fixed_points", "float64_copy",
           "kaplan_yorke", "limit_cycle", "linearize", "lyapunov_spectrum", "sample_starts", "time_constants"]
