"""statesim-mujoco: the salamander closed loop (CPG or learned RNN -> PD servos -> MuJoCo swimmer)."""
__version__ = "0.1.0"
