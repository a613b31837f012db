"""Contract suites for plugin authors: pytest base classes that check a cell, topology, initial-state policy or
scenario honours statesim's contract. Subclass one in your plugin's tests (docs/writing-plugins.md, "Testing a
plugin"); statesim runs the very same suites on every built-in.

Importing this module needs pytest (it is a test helper, not a runtime dependency).
"""
from statesim.testing.cells import CellContractTests
from statesim.testing.components import PolicyContractTests, TopologyContractTests
from statesim.testing.scenarios import ScenarioContractTests

__all__ = ["CellContractTests", "PolicyContractTests", "ScenarioContractTests", "TopologyContractTests"]
