"""The public API reference cannot drift: every public name has a docstring with an example, every example
runs (doctest), the list covers every export, and docs/api.md is regenerated and compared."""
from __future__ import annotations

import doctest
import warnings
from pathlib import Path

import pytest

import statesim
import statesim.forcing
from statesim import apidoc
from statesim.embed import EmbeddedModel

ROOT = Path(__file__).resolve().parents[1]
NAMES = [name for _, _, names in apidoc.PUBLIC for name in names]


def test_api_reference_is_up_to_date():
    committed = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert committed == apidoc.generate(), ("docs/api.md is stale: regenerate it with "
                                            "`python -m statesim.apidoc > docs/api.md`")


def test_every_public_name_has_a_docstring_and_an_example():
    assert apidoc.problems() == []


def test_a_name_without_docstring_or_example_is_reported(monkeypatch):
    def undocumented(x: int) -> int:
        return x

    def no_example(x: int) -> int:
        """Only a summary."""
        return x

    monkeypatch.setattr(statesim.forcing, "undocumented", undocumented, raising=False)
    monkeypatch.setattr(statesim.forcing, "no_example", no_example, raising=False)
    monkeypatch.setattr(apidoc, "PUBLIC", (("T", "", ("statesim.forcing.undocumented",
                                                      "statesim.forcing.no_example")),))
    assert apidoc.problems() == ["statesim.forcing.undocumented: no docstring",
                                 "statesim.forcing.no_example: its docstring has no example (>>> lines)"]


def test_public_list_covers_every_export():
    """A lazy export, a name of statesim.embed's __all__ or a public member of EmbeddedModel missing from
    PUBLIC would be public but undocumented."""
    assert len(NAMES) == len(set(NAMES))
    documented = set(NAMES)
    for name in statesim._EXPORTS:
        assert f"statesim.{name}" in documented, name
    for name in statesim.embed.__all__:
        assert f"statesim.embed.{name}" in documented, name
    for member in vars(EmbeddedModel):
        if not member.startswith("_"):
            assert f"statesim.embed.EmbeddedModel.{member}" in documented, member


def test_signatures_are_deterministic():
    text = apidoc.generate()
    assert " at 0x" not in text
    assert "unroll(cell: Cell, inputs: Tensor, state: State | None = None, *, lengths: Tensor | None = None" in text


@pytest.mark.parametrize("name", NAMES)
def test_example_runs(name):
    item = apidoc.entry(name)
    test = doctest.DocTestParser().get_doctest(item.doc, {}, name, name, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an example that warns shows a practice the reader should not copy
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
