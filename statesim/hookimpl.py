"""The marker plugins use on their hook functions: ``@statesim.hookimpl``."""
import pluggy

hookimpl = pluggy.HookimplMarker("statesim")
