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
# The AutoDeco fields' JSON types, checked strictly: a string "no" must not read as true.
# The switches may be left out (true) but not null; a null name or size means "not set".
_SWITCHES = ("enable_temperature_head", "enable_top_p_head", "use_enhanced_features")
_OPTIONAL_TYPES = {"base_model_name_or_path": str, "base_model_type": str, "temperature_hidden_size": int, "top_p_hidden_size": int}
# Fields of the file that describe the file itself, not the base.
_OWN_FIELDS = ("model_type", "architectures", "text_config", "transformers_version", "_name_or_path", "_model_name_or_path")


def base_config_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The base config's fields out of a flat released config dict."""
    return {k: v for k, v in fields.items() if k not in AUTODECO_FIELDS and k not in _OWN_FIELDS}


def base_config(fields: dict[str, Any], source: str = "config.json") -> PretrainedConfig:
    """The base's own config, rebuilt from a flat released config dict (its ``base_model_type``
    and the base's fields); ``source`` names the file in the error when it names no base type."""
    base_type = fields.get("base_model_type")
    if not base_type:
        raise AutoDecoError(f"{source} names no base_model_type; cannot rebuild the base's config (add the base's model_type)")
    return _base_config(base_type, base_config_fields(fields))


def json_kind(value: Any) -> str:
    """How JSON names the type of a parsed JSON value, for error messages ("a string", "an array")."""
    kinds = ((bool, "a boolean"), (str, "a string"), (int, "an integer"), (float, "a number"), (list, "an array"), (dict, "an object"))
    return next((kind for python_type, kind in kinds if isinstance(value, python_type)), "null")


def check_autodeco_fields(fields: dict[str, Any], source: str = "config.json") -> None:
    """Raise :class:`AutoDecoError` naming the first AutoDeco field of the wrong JSON type: the
    head switches must be true or false, the base's name and type strings, the hidden sizes
    positive integers (``source`` names the file in the message)."""
    for name in _SWITCHES:
        if name in fields and not isinstance(fields[name], bool):
            raise AutoDecoError(f"{source}: {name} is {json_kind(fields[name])} ({fields[name]!r}); it must be true or false")
    for name, expected in _OPTIONAL_TYPES.items():
        value = fields.get(name)
        if value is None:
            continue
        if expected is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise AutoDecoError(f"{source}: {name} is {json_kind(value)} ({value!r}); it must be a positive integer (the base's hidden size)")
        if expected is str and not isinstance(value, str):
            raise AutoDecoError(f"{source}: {name} is {json_kind(value)} ({value!r}); it must be a string")


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
        check_autodeco_fields({
            "base_model_name_or_path": base_model_name_or_path, "base_model_type": base_model_type,
            "enable_temperature_head": enable_temperature_head, "enable_top_p_head": enable_top_p_head,
            "use_enhanced_features": use_enhanced_features, "temperature_hidden_size": temperature_hidden_size,
            "top_p_hidden_size": top_p_hidden_size,
        })
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
