"""statesim-example: a third-party statesim plugin providing the ``leaky`` cell.

statesim finds it through the entry point ``example = "statesim_example.plugin"`` in the ``statesim``
group (see pyproject.toml); nothing in statesim imports this package by name.
"""

__version__ = "0.1.0"
