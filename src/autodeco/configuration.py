"""AutoDecoConfig: the released ``config.json`` (model_type "autodeco") as a transformers config.

The released file is the base config's fields, flat, plus the AutoDeco fields
(``base_model_name_or_path``, ``base_model_type``, the head switches). This class keeps that
layout and also rebuilds the base's own config as ``text_config``, so that code reading
``config.get_text_config()`` (vLLM's engine sizing its KV cache, detecting MLA or sliding
windows) sees the base architecture. Only transformers is imported: the vLLM plugin loads it
next to whatever transformers version vLLM pins.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

from autodeco.errors import AutoDecoError

MERGED_PREFIX = "llm."  # a merged checkpoint's base tensors are named llm.<the base's own key>
# Fields the released config adds on top of the base config's own fields.
AUTODECO_FIELDS = (
    "base_model_name_or_path", "base_model_type", "enable_temperature_head", "enable_top_p_head",
    "use_enhanced_features", "temperature_hidden_size", "top_p_hidden_size",
)
# Fields of the file that describe the file itself, not the base.
_OWN_FIELDS = ("model_type", "architectures", "text_config", "transformers_version", "_name_or_path", "_model_name_or_path")


def base_config_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The base config's fields out of a flat released config dict."""
    return {k: v for k, v in fields.items() if k not in AUTODECO_FIELDS and k not in _OWN_FIELDS}


class AutoDecoConfig(PretrainedConfig):
    """The AutoDeco fields, the base's fields (flat, as released) and ``text_config``: the base's
    own config object, rebuilt from those fields with ``AutoConfig.for_model(base_model_type)``."""

    model_type = "autodeco"

    def __init__(
        self,
        base_model_name_or_path: str | None = None,
        base_model_type: str | None = None,
        enable_temperature_head: bool = True,
        enable_top_p_head: bool = True,
        use_enhanced_features: bool = True,
        temperature_hidden_size: int | None = None,
        top_p_hidden_size: int | None = None,
        text_config: PretrainedConfig | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.base_model_name_or_path = base_model_name_or_path
        self.base_model_type = base_model_type
        self.enable_temperature_head = enable_temperature_head
        self.enable_top_p_head = enable_top_p_head
        self.use_enhanced_features = use_enhanced_features
        self.temperature_hidden_size = temperature_hidden_size
        self.top_p_hidden_size = top_p_hidden_size
        if isinstance(text_config, dict):
            text_config = AutoConfig.for_model(**text_config)
        if text_config is None and base_model_type:
            text_config = _base_config(base_model_type, base_config_fields(kwargs))
        self.text_config = text_config
        super().__init__(**kwargs)

    def get_text_config(self, *args: Any, **kwargs: Any) -> PretrainedConfig:
        """The base's config (the object every text-model field lives on)."""
        return self.text_config if self.text_config is not None else self


def _base_config(base_model_type: str, fields: dict[str, Any]) -> PretrainedConfig:
    try:
        return AutoConfig.for_model(base_model_type, **fields)
    except ValueError as error:
        raise AutoDecoError(
            f"config.json names base_model_type {base_model_type!r}, which this transformers version does not know "
            f"({str(error).splitlines()[0]}); upgrade transformers or fix base_model_type"
        ) from error
