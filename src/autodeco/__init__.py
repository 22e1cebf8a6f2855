"""autodeco: learned per-token temperature and top-p for any Hugging Face causal LM.

Importing it registers the ``autodeco`` model type with transformers' ``AutoConfig`` and
``AutoModelForCausalLM`` (:mod:`autodeco.modeling`), so that ``AutoModelForCausalLM.from_pretrained``
loads AutoDeco dirs with no ``trust_remote_code``, and gives the model class the decode engine
(:mod:`autodeco.decoding`) for assisted generation. The other public names load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AutoDecoError": "autodeco.errors",
    "AutoDecoGenerateOutput": "autodeco.modeling",
    "AutoDecoHeads": "autodeco.heads",
    "AutoDecoModelForCausalLM": "autodeco.modeling",
    "AutoDecoOutput": "autodeco.modeling",
    "Completion": "autodeco.engine",
    "SamplingParams": "autodeco.sampling",
    "Speculation": "autodeco.speculative",
    "StreamEvent": "autodeco.engine",
    "TemperatureHead": "autodeco.heads",
    "TokenTrace": "autodeco.engine",
    "TopPHead": "autodeco.heads",
    "generate": "autodeco.engine",
    "make_speculation": "autodeco.speculative",
    "sample_tokens": "autodeco.sampling",
    "stream": "autodeco.engine",
    "top_p_probs": "autodeco.sampling",
}

if TYPE_CHECKING:
    from autodeco.engine import Completion, StreamEvent, TokenTrace, generate, stream
    from autodeco.errors import AutoDecoError
    from autodeco.heads import AutoDecoHeads, TemperatureHead, TopPHead
    from autodeco.modeling import AutoDecoGenerateOutput, AutoDecoModelForCausalLM, AutoDecoOutput
    from autodeco.sampling import SamplingParams, sample_tokens, top_p_probs
    from autodeco.speculative import Speculation, make_speculation

__version__ = "0.1.0"

import_module("autodeco.modeling")  # registers AutoDeco with transformers' auto classes
import_module("autodeco.decoding")  # installs the decode engine's assisted generation on the model class
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'autodeco' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return [*__all__, "__version__"]
