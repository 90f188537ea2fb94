"""The method registry finds methods itself; a method is one class plus config blocks."""

import sys
import textwrap

import pytest

from spuraug import methods
from spuraug.config import ConfigError, config_path, load_config
from spuraug.data.registry import dataset_names


@pytest.fixture
def fresh_registry(monkeypatch):
    """A copy of the registry that scans again (the real one is restored after the test)."""
    methods.method_names()
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))
    monkeypatch.setattr(methods, "_LOADED", False)
    return methods


def test_every_baseline_module_is_found_without_a_list():
    names = methods.method_names()
    assert names[0] == "erm" and names[-1] == "ddb"
    assert {"erm", "groupdro", "jtt", "dfr", "subg", "rwg", "ddb"} <= set(names)
    for name in names:
        cls = methods.get_method(name)
        assert cls.display_name and cls.citation and set(cls.annotation) == {"train_group_labels", "val_group_labels"}
    assert [methods.display_name(n) for n in ("groupdro", "subg", "rwg")] == ["GroupDRO", "SUBG", "RWG"]
    assert methods.display_name("nosuch") == "nosuch"
    assert methods.get_method("subg").annotation["train_group_labels"] is True
    assert methods.get_method("jtt").annotation["train_group_labels"] is False


def test_a_new_module_in_a_scanned_package_is_registered(tmp_path, monkeypatch, fresh_registry):
    pkg = tmp_path / "extra_methods"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mine.py").write_text(textwrap.dedent('''
        from spuraug.methods import TRAIN_PARAMS, Method, param, register_method

        @register_method("mine")
        class Mine(Method):
            display_name = "Mine"
            citation = "Someone 2030"
            order = 45
            params = {**TRAIN_PARAMS, "alpha": param(0.5, float)}
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(methods, "METHOD_PACKAGES", (*methods.METHOD_PACKAGES, "extra_methods"))
    names = methods.method_names()
    assert "mine" in names and names.index("mine") == names.index("subg") + 1  # by its order
    assert methods.display_name("mine") == "Mine"
    # its config section is validated against its params: defaults filled, bad values named
    cfg = load_config("toy", "mine")
    assert cfg["hparams"]["alpha"] == 0.5
    with pytest.raises(ConfigError, match=r"mine\.alpha"):
        load_config("toy", "mine", overrides={"mine.alpha": "high"})
    sys.modules.pop("extra_methods.mine", None)
    sys.modules.pop("extra_methods", None)


def test_a_method_without_display_name_or_citation_is_refused(fresh_registry):
    with pytest.raises(ValueError, match="display_name, citation"):
        @methods.register_method("bare")
        class Bare(methods.Method):
            pass


def test_unknown_config_section_names_the_registered_methods(tmp_path):
    bad = tmp_path / "toy.yaml"
    bad.write_text("model:\n  name: toy_cnn  # x\nsubgg:\n  lr: 0.1  # x\n")
    with pytest.raises(ConfigError, match=r"subgg: unknown section; allowed sections: .*subg, rwg") as e:
        load_config("toy", "erm", config_file=bad)
    assert str(bad) in str(e.value)


@pytest.mark.parametrize("dataset", ["toy", "waterbirds", "celeba", "metashift"])
def test_new_methods_have_a_block_in_every_dataset_config(dataset):
    assert dataset in dataset_names()
    text = config_path(dataset).read_text()
    for name in ("subg", "rwg"):
        assert f"\n{name}:\n" in text
        cfg = load_config(dataset, name)
        assert set(cfg["hparams"]) == set(methods.get_method(name).params)
        # every value of the block is set and cited
        assert all(f"{name}.{k}" in cfg["sources"] for k in cfg["hparams"])
