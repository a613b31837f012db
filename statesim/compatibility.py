"""Where a component fits: what topologies and initial-state policies need, and what scenarios and topologies
supply. Validation refuses a combination whose needs nothing supplies (so what validates, runs), and the YAML
reference's compatibility table is computed from the same declarations."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from statesim.model import InitialState, Topology
from statesim.scenario import Scenario

#: How a need reads in a message ("needs <words>").
NEED_WORDS = {"encoding": "an encoding (an encoder's output)",
              "encoder": "a topology that runs a sequence encoder over the source",
              "source": "a source sequence for its encoder (a sentence)",
              "prefix": "the steps before each sequence (a prefix)",
              "stepping": "a topology that runs one tick at a time (not bidirectional)"}


def need_words(needs: frozenset[str] | set[str]) -> str:
    """``{"encoding", "prefix"}`` as words for a message."""
    return " and ".join(NEED_WORDS.get(n, f"'{n}'") for n in sorted(needs))


def requirements(cls: type[Scenario] | type[Topology] | type[InitialState], params: BaseModel | None) -> frozenset[str]:
    """What a scenario, topology or policy needs with these parameters (its declared ``needs`` without them)."""
    return frozenset(cls.needs if params is None else cls.requires(params))


def supplies(cls: type[Scenario] | type[Topology], params: BaseModel | None = None) -> frozenset[str]:
    """What a scenario or topology gives the model it is part of (a topology's ``offers(params)``)."""
    if params is not None and issubclass(cls, Topology):
        return frozenset(cls.offers(params))
    return frozenset(cls.supplies)


@dataclass(frozen=True)
class Fit:
    """The needs a combination leaves unmet: the scenario's (from the topology), the topology's (from the
    scenario) and the policy's (from either)."""

    scenario: frozenset[str]
    topology: frozenset[str]
    policy: frozenset[str]

    @property
    def ok(self) -> bool:
        """Every need is supplied."""
        return not self.scenario and not self.topology and not self.policy


def fit(scenario: type[Scenario], topology: type[Topology], topology_params: BaseModel | None,
        policy: type[InitialState], policy_params: BaseModel | None, scenario_params: BaseModel | None = None) -> Fit:
    """The unmet needs of a scenario, a topology and an initial-state policy together."""
    given, offered = supplies(scenario), supplies(topology, topology_params)
    return Fit(requirements(scenario, scenario_params) - offered, requirements(topology, topology_params) - given,
               requirements(policy, policy_params) - given - offered)


def default_params(record: Any) -> BaseModel | None:
    """A registration's parameters at their defaults (None when some parameter is required)."""
    try:
        return record.params.model_validate({})
    except ValidationError:
        return None
