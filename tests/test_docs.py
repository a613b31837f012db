"""The docs cannot drift: docs/scenarios.md is regenerated from the pydantic models and compared, every
hook and environment variable is documented, and every scenario file and API name the docs cite exists."""
from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

from statesim import hookspecs, plugin_manager
from statesim.config import RunConfig
from statesim.docgen import generate, main
from statesim.plugin_manager import build_plugin_host

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PROSE = ["concepts.md", "writing-plugins.md", "scenarios.md"]


def test_scenarios_reference_is_up_to_date():
    committed = (DOCS / "scenarios.md").read_text(encoding="utf-8")
    assert committed == generate(), ("docs/scenarios.md is stale: regenerate it with "
                                     "`python -m statesim.docgen > docs/scenarios.md`")


def _section(text: str, anchor: str) -> str:
    start = text.index(f'<a id="{anchor}"></a>')
    following = text.find("<a id=", start + 1)
    return text[start:following if following > 0 else None]


def test_reference_lists_every_core_key_and_every_builtin_parameter():
    text = generate()
    for name, field in RunConfig.model_fields.items():
        assert f"| `{name}` |" in _section(text, "top-level")
    host = build_plugin_host(autoload=False)
    for kind, table in host.registry.entries.items():
        for name, provided in table.items():
            anchor = re.sub(r"[^a-z0-9]+", "-", f"{kind}-{name}".lower()).strip("-")
            section = _section(text, anchor)
            for param, field in provided.record.params.model_fields.items():
                assert f"| `{param}` |" in section, (kind, name, param)
                if field.description:
                    assert " ".join(field.description.split()).replace("|", "\\|") in section


def test_installed_flag_documents_third_party_plugins(capsys):
    assert main(["--installed"]) == 0
    text = capsys.readouterr().out
    section = _section(text, "cell-leaky")
    assert "Plugin `example` (statesim-example" in section
    for param in ("hidden_size", "leak", "learn_leak", "activation", "bias"):
        assert f"| `{param}` |" in section
    assert "cell-leaky" not in generate()  # the committed reference does not depend on what is installed


def test_writing_plugins_documents_every_hook_and_environment_variable():
    text = (DOCS / "writing-plugins.md").read_text(encoding="utf-8")
    hooks = [n for n in dir(hookspecs) if n.startswith("statesim_")]
    assert len(hooks) >= 4
    for hook in hooks:
        assert f"`{hook}`" in text, hook
    for variable in (plugin_manager.AUTOLOAD_ENV, plugin_manager.BLOCK_ENV, "--strict-plugins", "--block-plugin"):
        assert variable in text
    assert f'[project.entry-points.{plugin_manager.ENTRY_POINT_GROUP}]' in text


@pytest.mark.parametrize("name", PROSE)
def test_cited_files_and_api_names_exist(name):
    text = (DOCS / name).read_text(encoding="utf-8")
    cited = re.findall(r"(?<![\w/.-])((?:scenarios|plugins|statesim|docs|tests)/[\w./-]+\.(?:yaml|py|md|toml))", text)
    for path in set(cited):
        assert (ROOT / path).exists(), f"{name} cites {path}, which does not exist"
    for dotted in set(re.findall(r"`(statesim(?:\.\w+)+)", text)):
        module, _, attr = dotted.rpartition(".")
        try:
            importlib.import_module(dotted)
        except ModuleNotFoundError:
            assert hasattr(importlib.import_module(module), attr), f"{name} cites {dotted}, which does not exist"


def _block(text: str, first_line: str) -> str:
    """The fenced code block whose first line is ``first_line``."""
    for match in re.finditer(r"```(?:python|yaml)\n(.*?)```", text, re.S):
        if match.group(1).startswith(first_line):
            return match.group(1)
    raise AssertionError(f"docs/writing-plugins.md has no code block starting with {first_line!r}")


@pytest.mark.slow
def test_writing_plugins_snippets_install_and_run(tmp_path, monkeypatch):
    from statesim.run import execute

    text = (DOCS / "writing-plugins.md").read_text(encoding="utf-8")
    site = tmp_path / "site"
    info = site / "docs_snippets-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: docs-snippets\nVersion: 1.0\n")
    points = {"snippet_topology": "mytopo", "snippet_state": "mystate", "snippet_scenario": "myscenario"}
    (info / "entry_points.txt").write_text("[statesim]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    for module in points.values():
        (site / f"{module}.py").write_text(_block(text, f"# {module}.py"))
    scenario = tmp_path / "delay.yaml"
    scenario.write_text(_block(text, "# statesim run delay.yaml"))
    monkeypatch.syspath_prepend(str(site))
    for var in ("STATESIM_DISABLE_PLUGIN_AUTOLOAD", "STATESIM_BLOCK_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    try:
        host = build_plugin_host(strict=True)
        assert host.registry.get("topology", "with_input").distribution == "docs-snippets"
        run = execute(scenario, ["training.steps=20", "scenario.sequences=16", "scenario.steps=12"],
                      out=tmp_path / "run", host=host, echo=lambda message: None)
    finally:
        for module in points.values():
            sys.modules.pop(module, None)
    results = json.loads((run / "results.json").read_text())
    assert results["scenario"] == "delay_line"
    # Independent truth: the test set rebuilt from the seed as the example draws it, and the saved model on it.
    from statesim.runfolder import load_model

    saved = yaml.safe_load((run / "config.yaml").read_text())
    gen, steps, delay = torch.Generator().manual_seed(saved["seed"]), 12, saved["scenario"]["delay"]
    for n in (16, 32, 64):  # train, val, test: the order the example draws them
        x = torch.randn(steps, n, 1, generator=gen)
    y = torch.zeros_like(x)
    y[delay:] = x[: steps - delay]
    model, _ = load_model(run)
    with torch.no_grad():
        mse = float(((model(x).outputs - y) ** 2).mean())
    assert results["test_mse"] == pytest.approx(mse, rel=1e-5)
    saved = (run / "config.yaml").read_text()
    assert "type: with_input" in saved and "value: 0.1" in saved and "type: leaky" in saved
