"""Plugin discovery and failure isolation, through real (installed or fake on-disk) distributions.

Fake distributions are a ``NAME-VERSION.dist-info`` folder (METADATA + entry_points.txt) next to a
module, in a temporary folder put on the path: importlib.metadata finds them exactly as it finds
pip-installed ones. CLI checks run ``python -m statesim`` in a subprocess with PYTHONPATH set.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from statesim.cli import main
from statesim.errors import ConfigError, PluginError, UnknownNameError
from statesim.plugin_manager import build_plugin_host

GOOD_CELL = '''
    from pydantic import Field
    from statesim import Cell, CellParams, Registration, hookimpl


    class GainParams(CellParams):
        gain: float = Field(1.0, gt=0, description="output gain")


    class GainCell(Cell):
        """Stateless y = gain * x, with a one-unit state that just counts steps."""

        Params = GainParams

        def __init__(self, input_size, gain=1.0):
            super().__init__(input_size)
            self.gain = gain

        @property
        def state_spec(self):
            return {"n": (1,)}

        @property
        def output_size(self):
            return self.input_size

        def forward(self, x, state):
            return self.gain * x, {"n": state["n"] + 1}


    @hookimpl
    def statesim_cells():
        return [Registration("{name}", GainCell, GainParams, "y = gain * x")]
'''


def _write_dist(root: Path, dist: str, version: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """Create a fake installed distribution under ``root``."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[statesim]\n{lines}", encoding="utf-8")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder of fake distributions on sys.path; the modules they import are forgotten afterwards."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    for var in ("STATESIM_DISABLE_PLUGIN_AUTOLOAD", "STATESIM_BLOCK_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    before = set(sys.modules)
    yield root
    for name in set(sys.modules) - before:
        if getattr(sys.modules[name], "__file__", "") and str(root) in (sys.modules[name].__file__ or ""):
            del sys.modules[name]


def _cli(args: list[str], site: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STATESIM_")}
    environ.update(OMP_NUM_THREADS="1", **env)
    if site is not None:
        environ["PYTHONPATH"] = os.pathsep.join([str(site), environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", "statesim", *args], capture_output=True, text=True, env=environ,
                          timeout=120)


def _one_problem(host, needle: str) -> str:
    matches = [p for p in host.problems if needle in p]
    assert len(matches) == 1, host.problems
    return matches[0]


# --------------------------------------------------------------------------- a fresh host per run
def test_importing_statesim_builds_no_plugin_manager():
    script = textwrap.dedent('''
        import pkgutil, importlib, pluggy
        made = []
        original = pluggy.PluginManager.__init__
        def counting(self, *a, **k):
            made.append(self)
            original(self, *a, **k)
        pluggy.PluginManager.__init__ = counting
        import statesim
        for info in pkgutil.walk_packages(statesim.__path__, "statesim."):
            if info.name.endswith("__main__"):
                continue
            importlib.import_module(info.name)
        print("after import", len(made))
        first, second = statesim.build_plugin_host(), statesim.build_plugin_host()
        print("after two hosts", len(made), first.manager is not second.manager,
              first.registry is not second.registry)
    ''')
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["after import 0", "after two hosts 2 True True"]


# --------------------------------------------------------------------------- a real installed distribution
def test_installed_example_distribution_is_discovered_with_name_and_version(site):
    host = build_plugin_host()
    version = metadata.version("statesim-example")
    example = [p for p in host.plugins if p.name == "example"]
    assert [(p.distribution, p.version) for p in example] == [("statesim-example", version)]
    assert host.provided_by("example")["cell"] == ["leaky"]
    done = _cli(["plugins"])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[lines.index(f"example  (statesim-example {version})") + 1].split() == ["cells:", "leaky"]


def test_installed_plugin_cell_is_usable_from_yaml_with_its_params_validated(site, tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("scenario: {type: moving_average}\nmodel:\n  cell: {type: leaky, hidden_size: 3, leak: 0.2}\n")
    assert main(["validate", str(good), "--print"]) == 0
    out = capsys.readouterr().out
    assert "type: leaky" in out and "learn_leak: false" in out  # default filled in
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenario: {type: moving_average}\nmodel:\n  cell:\n    type: leaky\n    hidden_size: 3\n"
                   "    leak: 7\n")
    assert main(["validate", str(bad)]) == 2
    assert f"{bad}, line 6: `model.cell.leak`" in capsys.readouterr().err


def test_fake_distribution_cell_is_listed_and_usable_from_yaml(site, tmp_path, capsys):
    _write_dist(site, "acme-cells", "2.0.1", {"acme": "acme_cells"},
                {"acme_cells": GOOD_CELL.replace("{name}", "gain")})
    host = build_plugin_host()
    assert not host.problems
    provided = host.registry.get("cell", "gain")
    assert (provided.plugin, provided.distribution, provided.version) == ("acme", "acme-cells", "2.0.1")
    assert main(["plugins"]) == 0
    assert "acme  (acme-cells 2.0.1)\n    cells: gain\n" in capsys.readouterr().out
    scenario = tmp_path / "gain.yaml"
    scenario.write_text("scenario: {type: moving_average}\nmodel:\n  cell: {type: gain, gian: 2}\n")
    done = _cli(["validate", str(scenario)], site)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"{scenario}, line 3: `model.cell.gian`: unknown key 'gian'. Did you mean 'gain'?" in done.stderr


def test_a_plugin_cell_returning_a_wrong_state_is_refused_by_validate_not_by_the_run(site, tmp_path):
    """Validation builds the model and runs its first forward, so a cell whose step returns a state part of the
    wrong width is named by `statesim validate` (key, cell, part, expected and got), before any run folder."""
    wrong_width = '{"n": (state["n"] + 1).repeat(1, 2)}'
    broken = GOOD_CELL.replace("{name}", "gain").replace('{"n": state["n"] + 1}', wrong_width)
    _write_dist(site, "acme-cells", "2.0.1", {"acme": "acme_cells"}, {"acme_cells": broken})
    scenario = tmp_path / "gain.yaml"
    scenario.write_text("scenario: {type: linear_system, input_size: 2}\nmodel:\n  cell: {type: gain}\n")
    done = _cli(["validate", str(scenario)], site)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert (f"{scenario}: `model`: this model fails its first forward on the scenario's shapes (inputs [3, 2, 2]): "
            f"ShapeError:") in done.stderr
    assert "GainCell" in done.stderr and "'n'" in done.stderr, done.stderr


def test_a_plugin_written_for_another_plugin_api_loads_with_a_warning_naming_both_versions(site, capsys):
    """STATESIM_PLUGIN_API = 2 against statesim's 1: a warning with both versions and the fix, the cell still
    usable, and no warning for a plugin that declares the current version or none."""
    import statesim

    _write_dist(site, "future-cells", "3.0", {"future": "future_cells"},
                {"future_cells": GOOD_CELL.replace("{name}", "gain") + "    STATESIM_PLUGIN_API = 2\n"})
    _write_dist(site, "acme-cells", "2.0.1", {"acme": "acme_cells"},
                {"acme_cells": GOOD_CELL.replace("{name}", "amp")
                               + f"    STATESIM_PLUGIN_API = {statesim.PLUGIN_API}\n"})
    host = build_plugin_host()
    message = str(_one_problem(host, "plugin API"))
    assert message.startswith("plugin 'future' (distribution future-cells 3.0) was written for statesim plugin API "
                              f"2 (STATESIM_PLUGIN_API in future_cells), but statesim {statesim.__version__} "
                              f"provides plugin API {statesim.PLUGIN_API}; it was loaded"), message
    assert "Install a release of future-cells written for plugin API 1" in message
    assert "gain" in host.registry.names("cell") and "amp" in host.registry.names("cell")
    assert host.registry.missing == []  # it loaded: an unknown name is not blamed on it
    assert main(["plugins"]) == 0
    assert "was written for statesim plugin API 2" in capsys.readouterr().out


# --------------------------------------------------------------------------- broken plugins
def test_broken_plugin_is_reported_by_name_and_distribution_and_the_rest_still_load(site):
    _write_dist(site, "broken-dist", "0.3", {"broken": "broken_mod"}, {"broken_mod": "raise RuntimeError('boom')\n"})
    _write_dist(site, "acme-cells", "2.0.1", {"acme": "acme_cells"},
                {"acme_cells": GOOD_CELL.replace("{name}", "gain")})
    host = build_plugin_host()
    message = _one_problem(host, "'broken'")
    assert "distribution broken-dist 0.3" in message and "RuntimeError: boom" in message
    assert "STATESIM_BLOCK_PLUGINS=broken" in message
    assert "gain" in host.registry.names("cell") and "leaky" in host.registry.names("cell")
    assert "lstm" in host.registry.names("cell")
    with pytest.raises(PluginError, match="plugin 'broken' .*broken-dist 0.3.*--strict-plugins"):
        build_plugin_host(strict=True)


def test_broken_plugin_cli_warns_strict_fails_without_traceback(site, tmp_path, capsys):
    _write_dist(site, "broken-dist", "0.3", {"broken": "broken_mod"}, {"broken_mod": "raise ImportError('no lib')\n"})
    listing = _cli(["plugins"], site)
    assert listing.returncode == 0, listing.stderr
    assert ("problem: plugin 'broken' (distribution broken-dist 0.3) failed to import: ImportError: no lib"
            in listing.stdout)
    assert "example  (statesim-example" in listing.stdout and "statesim.builtin.cells  (built-in)" in listing.stdout
    scenario = Path(__file__).parents[1] / "scenarios" / "moving_average.yaml"
    strict = _cli(["validate", str(scenario), "--strict-plugins"], site)
    assert strict.returncode == 2, strict.stdout
    assert strict.stderr.startswith("error: plugin 'broken' (distribution broken-dist 0.3) failed to import")
    assert "Traceback" not in strict.stderr
    assert main(["validate", str(scenario)]) == 0
    assert "warning: plugin 'broken'" in capsys.readouterr().err
    assert main(["plugins", "--strict-plugins"]) == 2
    assert capsys.readouterr().err.startswith("error: plugin 'broken' (distribution broken-dist 0.3)")


def test_a_name_from_a_plugin_that_failed_to_import_is_reported_with_the_plugin_and_why(site, tmp_path):
    """Issue 19 item 1: not `unknown cell 'indrnn'. Did you mean 'window'?` but who failed, why, and the fix."""
    _write_dist(site, "statesim-indrnn", "0.1", {"indrnn": "indrnn_mod"},
                {"indrnn_mod": "raise ImportError('No module named numba')\n"})
    scenario = tmp_path / "indrnn.yaml"
    scenario.write_text("scenario: {type: moving_average}\nmodel:\n  cell: {type: indrnn, hidden_size: 4}\n")
    for command in (["validate", str(scenario)], ["run", str(scenario), "--out", str(tmp_path / "run")]):
        done = _cli(command, site)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert ("`model.cell.type`: unknown cell 'indrnn': plugin 'indrnn' (distribution statesim-indrnn 0.1) "
                "failed to import: ImportError: No module named numba. Fix or uninstall it") in done.stderr
        assert "Did you mean" not in done.stderr
    assert not (tmp_path / "run").exists()
    host = build_plugin_host()
    with pytest.raises(UnknownNameError, match="plugin 'indrnn' .*statesim-indrnn 0.1.*failed to import"):
        host.registry.get("cell", "indrnn")


def test_a_name_from_a_dropped_plugin_lists_the_plugins_that_did_not_load(site):
    _write_dist(site, "clash-dist", "0.9", {"clash": "clash_mod"}, {"clash_mod": GOOD_CELL.replace("{name}", "lstm")})
    message = build_plugin_host().registry.unknown("cell", "ctrnn2")
    assert message.startswith("unknown cell 'ctrnn2'. Plugins that did not load (one may provide it): plugin "
                              "'clash' (distribution clash-dist 0.9) was refused: The cell name 'lstm' is "
                              "registered twice"), message
    assert "Did you mean" not in message  # 'ctrnn2' resembles no registered cell


def test_checkpoints_record_who_provided_each_component_and_a_host_without_it_says_what_to_install(
        site, tmp_path):
    """Issue 19 item 6: a checkpoint (and an export sidecar) names the distribution and version of its cell."""
    from statesim.export import export_model
    from statesim.run import execute
    from statesim.runfolder import load_model

    scenario = tmp_path / "leaky.yaml"
    scenario.write_text("scenario:\n  type: moving_average\n  steps: 10\n  train_sequences: 4\n  test_sequences: 2\n"
                        "  models:\n    leaky: {cell: {type: leaky, hidden_size: 2}, head: linear}\n"
                        "training: {steps: 2}\noutput: {plots: false}\n")
    run_dir = execute(str(scenario), [], out=tmp_path / "run", host=build_plugin_host(), echo=lambda m: None)
    job = sorted(p.name for p in (run_dir / "checkpoints").iterdir())[0]  # leaky-on-ema, leaky-on-ma...
    model, info = load_model(run_dir, job=job, registry=build_plugin_host().registry)
    version = metadata.version("statesim-example")
    example = {"plugin": "example", "distribution": "statesim-example", "version": version}
    assert info.meta["model"]["providers"]["cell"] == {"leaky": example}
    assert info.meta["model"]["providers"]["topology"]["unidirectional"]["distribution"] is None  # built-in
    sidecar = export_model(model, tmp_path / "leaky.pt", "torchscript")
    assert json.loads(Path(sidecar).read_text())["model"]["providers"]["cell"] == {"leaky": example}
    without = build_plugin_host(block=["example"]).registry
    expected = (rf"unknown cell 'leaky'\. It was provided by distribution statesim-example {version} where this "
                rf"was saved.*pip install 'statesim-example=={version}'")
    with pytest.raises(ConfigError, match=expected):
        load_model(run_dir, job=job, registry=without)


def test_wrong_signature_misspelled_unmarked_and_raising_hooks_are_each_reported(site):
    sources = {
        "wrongsig": "import statesim\n@statesim.hookimpl\ndef statesim_cells(config):\n    return []\n",
        "typo_one": "import statesim\n@statesim.hookimpl\ndef statesim_cell():\n    return []\n",
        "typo_two": "import statesim\n@statesim.hookimpl\ndef statesim_scenario():\n    return []\n",
        "unmarked": "def statesim_cells():\n    return []\n",
        "raising": "import statesim\n@statesim.hookimpl\ndef statesim_topologies():\n    raise ValueError('bad')\n",
        "notrecord": "import statesim\n@statesim.hookimpl\ndef statesim_cells():\n    return [('x', object)]\n",
        "notcell": ("import statesim, pydantic\nclass P(pydantic.BaseModel): pass\n@statesim.hookimpl\n"
                    "def statesim_cells():\n    return [statesim.Registration('thing', dict, P)]\n"),
    }
    for name, source in sources.items():
        _write_dist(site, f"{name}-dist", "1.0", {name: f"{name}_mod"}, {f"{name}_mod": source})
    _write_dist(site, "acme-cells", "2.0.1", {"acme": "acme_cells"},
                {"acme_cells": GOOD_CELL.replace("{name}", "gain")})
    host = build_plugin_host()
    for name in sources:
        assert f"distribution {name}-dist 1.0" in _one_problem(host, f"plugin '{name}'")
    assert "Argument(s) {'config'}" in _one_problem(host, "'wrongsig'")
    assert "unknown hook 'statesim_cell'" in _one_problem(host, "'typo_one'")
    assert "unknown hook 'statesim_scenario'" in _one_problem(host, "'typo_two'")
    assert "statesim_cells() without the @statesim.hookimpl marker" in _one_problem(host, "'unmarked'")
    assert "ValueError: bad" in _one_problem(host, "'raising'")
    assert "expected statesim.Registration" in _one_problem(host, "'notrecord'")
    assert "not a subclass of statesim.Cell" in _one_problem(host, "'notcell'")
    assert "thing" not in host.registry.names("cell")
    loaded = {p.name for p in host.plugins}
    assert {"acme", "example", "statesim.builtin.cells"} <= loaded
    assert not loaded & {"wrongsig", "typo_one", "typo_two", "raising", "notrecord", "notcell"}
    with pytest.raises(PluginError):
        build_plugin_host(strict=True)


# --------------------------------------------------------------------------- duplicates
def test_duplicate_cell_name_names_both_providers_and_keeps_the_first(site):
    _write_dist(site, "clash-dist", "0.9", {"clash": "clash_mod"}, {"clash_mod": GOOD_CELL.replace("{name}", "lstm")})
    _write_dist(site, "acme-cells", "2.0.1", {"acme": "acme_cells"},
                {"acme_cells": GOOD_CELL.replace("{name}", "gain")})
    _write_dist(site, "zeta-cells", "1.1", {"zeta": "zeta_cells"}, {"zeta_cells": GOOD_CELL.replace("{name}", "gain")})
    host = build_plugin_host()
    message = _one_problem(host, "'lstm'")
    assert "plugin 'statesim.builtin.cells' (distribution statesim (built-in))" in message
    assert "plugin 'clash' (distribution clash-dist 0.9)" in message and "'clash' was not loaded" in message
    assert host.registry.get("cell", "lstm").plugin == "statesim.builtin.cells"
    message = _one_problem(host, "'gain' is registered twice")
    assert "plugin 'acme' (distribution acme-cells 2.0.1)" in message and \
        "plugin 'zeta' (distribution zeta-cells 1.1)" in message
    assert host.registry.get("cell", "gain").distribution == "acme-cells"
    with pytest.raises(PluginError, match="'lstm' is registered twice"):
        build_plugin_host(strict=True)


def test_two_distributions_with_the_same_plugin_name_are_both_named(site):
    _write_dist(site, "twin-a", "1.0", {"twin": "twin_a"}, {"twin_a": GOOD_CELL.replace("{name}", "twin_a_cell")})
    _write_dist(site, "twin-b", "2.0", {"twin": "twin_b"}, {"twin_b": GOOD_CELL.replace("{name}", "twin_b_cell")})
    host = build_plugin_host()
    message = _one_problem(host, "plugin 'twin'")
    assert "distribution twin-b 2.0" in message and "already used by distribution twin-a 1.0" in message
    assert [p.distribution for p in host.plugins if p.name == "twin"] == ["twin-a"]
    assert "twin_a_cell" in host.registry.names("cell") and "twin_b_cell" not in host.registry.names("cell")


def test_plugin_problems_are_structured_records(site):
    _write_dist(site, "broken-dist", "0.3", {"broken": "broken_mod"}, {"broken_mod": "raise RuntimeError('boom')\n"})
    _write_dist(site, "clash-dist", "0.9", {"clash": "clash_mod"}, {"clash_mod": GOOD_CELL.replace("{name}", "lstm")})
    host = build_plugin_host()
    by_name = {p.name: p for p in host.problems}
    broken, clash = by_name["broken"], by_name["clash"]
    assert (broken.distribution, broken.version) == ("broken-dist", "0.3")
    assert broken.what == "failed to import: RuntimeError: boom"
    assert broken.fix == "Fix or uninstall it, or skip it with STATESIM_BLOCK_PLUGINS=broken."
    assert str(broken) == f"plugin 'broken' (distribution broken-dist 0.3) {broken.what}. {broken.fix}"
    assert (clash.distribution, clash.version) == ("clash-dist", "0.9") and "'lstm' is registered twice" in clash.what
    assert clash.fix.startswith("Uninstall or block one of them (STATESIM_BLOCK_PLUGINS=clash)")
    assert set(broken.to_json()) == {"name", "distribution", "version", "what", "fix", "message"}


def test_tryfirst_moves_a_plugin_to_the_front_of_the_merge(site):
    """Two plugins register the same name: load order decides, unless one hook is marked tryfirst."""
    first = GOOD_CELL.replace("{name}", "gain")
    eager = GOOD_CELL.replace("{name}", "gain").replace("@hookimpl\n    def statesim_cells",
                                                         "@hookimpl(tryfirst=True)\n    def statesim_cells")
    assert eager != first
    _write_dist(site, "a-cells", "1.0", {"a_plugin": "a_cells"}, {"a_cells": first})
    _write_dist(site, "z-cells", "1.0", {"z_plugin": "z_cells"}, {"z_cells": eager})
    host = build_plugin_host()
    assert host.registry.get("cell", "gain").plugin == "z_plugin"
    assert [p.name for p in host.problems] == ["a_plugin"]


def test_hooks_are_called_through_pluggy_so_its_tracing_sees_them(site, monkeypatch, capsys):
    _write_dist(site, "acme-cells", "2.0.1", {"acme": "acme_cells"},
                {"acme_cells": GOOD_CELL.replace("{name}", "gain")})
    monkeypatch.setenv("STATESIM_TRACE_HOOKS", "1")
    build_plugin_host()
    trace = capsys.readouterr().err
    for kind in ("statesim_cells", "statesim_topologies", "statesim_initial_states", "statesim_scenarios",
                 "statesim_encoders"):
        assert f"{kind} [hook]" in trace
    assert "finish statesim_cells -->" in trace and "'gain'" in trace


def test_one_table_of_kinds_drives_hooks_bases_config_and_listing():
    import inspect

    from statesim import hookspecs
    from statesim.config import ComponentSpec
    from statesim.kinds import BY_NAME, KINDS

    specs = {name for name, f in vars(hookspecs).items() if name.startswith("statesim_") and inspect.isfunction(f)}
    assert {kind.hook for kind in KINDS} <= specs
    assert {cls.kind for cls in ComponentSpec.__subclasses__()} <= set(BY_NAME)
    assert [kind.base_class().__name__ for kind in KINDS] == ["Cell", "Topology", "InitialState", "Scenario",
                                                                "Encoder", "Logger"]
    host = build_plugin_host(autoload=False)
    assert set(host.registry.entries) == set(BY_NAME)


# --------------------------------------------------------------------------- turning plugins off
def test_autoload_env_var_block_env_var_and_block_flag(site, monkeypatch, capsys):
    _write_dist(site, "broken-dist", "0.3", {"broken": "broken_mod"}, {"broken_mod": "raise RuntimeError('boom')\n"})
    _write_dist(site, "acme-cells", "2.0.1", {"acme": "acme_cells"},
                {"acme_cells": GOOD_CELL.replace("{name}", "gain")})
    off = _cli(["plugins"], site, STATESIM_DISABLE_PLUGIN_AUTOLOAD="1")
    assert off.returncode == 0, off.stderr
    assert "acme" not in off.stdout and "example" not in off.stdout and "problem" not in off.stdout
    assert "statesim.builtin.cells  (built-in)" in off.stdout
    monkeypatch.setenv("STATESIM_BLOCK_PLUGINS", "broken, example")
    assert main(["plugins", "--strict-plugins"]) == 0
    blocked = capsys.readouterr().out
    assert "problem" not in blocked and "example" not in blocked and "acme  (acme-cells" in blocked
    monkeypatch.delenv("STATESIM_BLOCK_PLUGINS")
    assert main(["plugins", "--block-plugin", "broken", "--block-plugin", "statesim.builtin.cells"]) == 0
    flagged = capsys.readouterr().out
    assert ("problem" not in flagged and "statesim.builtin.cells" not in flagged
            and "acme  (acme-cells 2.0.1)" in flagged)
    monkeypatch.setenv("STATESIM_DISABLE_PLUGIN_AUTOLOAD", "yes")
    assert main(["plugins"]) == 0
    assert "acme" not in capsys.readouterr().out


def test_blocking_a_builtin_makes_its_names_unknown_with_a_clear_error(site):
    host = build_plugin_host(block=["statesim.builtin.scenarios.linear_system"], autoload=False)
    assert "linear_system" not in host.registry.names("scenario")
    assert {p.name for p in host.plugins} >= {"statesim.builtin.cells"}
    assert all(p.distribution is None for p in host.plugins)
    from statesim.config import load_config

    scenario = Path(__file__).parents[1] / "scenarios" / "linear_system.yaml"
    with pytest.raises(ConfigError, match=r"`scenario.type`: unknown scenario 'linear_system'"):
        load_config(scenario, host.registry)


def test_test_module_basenames_are_unique_across_tests_and_plugins():
    # pytest's default import mode keys test modules by basename; plugins/*/tests sit beside tests/.
    root = Path(__file__).resolve().parents[1]
    files = [*root.glob("tests/**/test_*.py"), *root.glob("plugins/*/tests/**/test_*.py")]
    names = [f.name for f in files]
    assert len(files) >= 2 and len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
