"""statesim's own built-ins run the contract suites plugin authors run (statesim.testing)."""
from __future__ import annotations


from statesim.testing import CellContractTests

#: Small, non-default settings of every built-in cell (each branch a plugin cell could also take).
CELL_SPECS = {
    "linear": {"type": "linear", "hidden_size": 4, "output_size": 2},
    "vanilla": {"type": "vanilla", "hidden_size": 5},
    "vanilla_relu_nobias": {"type": "vanilla", "hidden_size": 5, "activation": "relu", "bias": False},
    "vanilla_sigmoid": {"type": "vanilla", "hidden_size": 4, "activation": "sigmoid"},
    "lstm": {"type": "lstm", "hidden_size": 4, "forget_bias": 1.0},
    "gru": {"type": "gru", "hidden_size": 4},
    "gru_nobias": {"type": "gru", "hidden_size": 4, "bias": False},
    "window": {"type": "window", "window": 3, "output_size": 2},
    "window_mlp": {"type": "window", "window": 2, "output_size": 2, "hidden": [4], "bias": True},
}


def _suite(name: str, spec: dict, **attrs) -> type:
    return type(f"TestCell_{name}", (CellContractTests,), {"cell_spec": spec, **attrs})


for _name, _spec in CELL_SPECS.items():
    globals()[f"TestCell_{_name}"] = _suite(_name, _spec)


class TestCell_salamander_cpg(CellContractTests):
    cell_spec = {"type": "salamander_cpg"}
    input_size = 2  # the two drives (d_L, d_R)
