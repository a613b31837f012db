"""statesim's own built-ins run the contract suites plugin authors run (statesim.testing)."""
from __future__ import annotations


from statesim.testing import CellContractTests, PolicyContractTests, TopologyContractTests

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


# --------------------------------------------------------------------------- topologies and policies
TOPOLOGY_SPECS = {
    "unidirectional": {"type": "unidirectional"},
    "bidirectional": {"type": "bidirectional", "merge": "sum"},
    "stacked": {"type": "stacked", "layers": 2},
    "stacked_residual_bifirst": {"type": "stacked", "layers": 3, "residual": True, "residual_from": 2,
                                 "bidirectional_first": True, "merge": "sum"},
    "encoder_decoder": {"type": "encoder_decoder", "encoder": {"type": "bidirectional"}},
    "encoder_decoder_attention": {"type": "encoder_decoder", "attention": "additive", "attention_size": 4},
}
POLICY_SPECS = {
    "zeros": {"type": "zeros"},
    "random": {"type": "random", "scale": 0.3},
    "learned": {"type": "learned"},
    "warmup": {"type": "warmup", "steps": 3, "prefix": "noise"},
    "warmup_inputs": {"type": "warmup", "steps": 2, "prefix": "inputs", "start": "random"},
    "encoded": {"type": "encoded"},  # sized by the encoding it is given (the encoder's, or the suite's)
}

for _name, _spec in TOPOLOGY_SPECS.items():
    # an encoder-decoder without attention reaches its encoder only through the encoded initial state
    _policy = {"type": "encoded"} if _spec["type"] == "encoder_decoder" else None
    globals()[f"TestTopology_{_name}"] = type(f"TestTopology_{_name}", (TopologyContractTests,),
                                              {"topology_spec": _spec, "initial_state_spec": _policy})
for _name, _spec in POLICY_SPECS.items():
    globals()[f"TestPolicy_{_name}"] = type(f"TestPolicy_{_name}", (PolicyContractTests,), {"policy_spec": _spec})
