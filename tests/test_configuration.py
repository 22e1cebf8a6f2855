"""AutoDecoConfig: the released config.json read as a transformers config, with the base's own
config rebuilt as text_config (what vLLM sizes its engine from)."""

import json

import pytest
from transformers import Gemma3TextConfig

from autodeco.configuration import AutoDecoConfig, base_config_fields
from autodeco.errors import AutoDecoError
from autodeco.models import resolve_heads


def test_released_config_exposes_the_base_as_text_config():
    config = AutoDecoConfig.from_pretrained(resolve_heads("gemma-3-270m"))
    base = config.get_text_config()
    assert isinstance(base, Gemma3TextConfig) and base.model_type == "gemma3_text"
    assert (base.hidden_size, base.vocab_size, base.num_hidden_layers) == (640, 262144, 18)
    assert base.layer_types[5] == "full_attention" and base.sliding_window == config.sliding_window
    assert config.base_model_name_or_path == "gemma-3-270m" and config.use_enhanced_features


def test_config_of_a_saved_model_round_trips(make_model, tmp_path):
    model = make_model("qwen2")
    model.save_pretrained(tmp_path)
    config = AutoDecoConfig.from_pretrained(tmp_path)
    assert config.text_config.to_dict()["hidden_size"] == model.llm.config.hidden_size
    assert config.text_config.model_type == "qwen2"
    fields = base_config_fields(json.loads((tmp_path / "config.json").read_text()))
    assert "base_model_type" not in fields and "architectures" not in fields and fields["hidden_size"] == 64


def test_unknown_base_type_is_named():
    with pytest.raises(AutoDecoError, match="base_model_type 'no_such_model'"):
        AutoDecoConfig(base_model_type="no_such_model", hidden_size=8)
