"""autodeco: learned per-token temperature and top-p for any Hugging Face causal LM."""

from autodeco.engine import Completion, StreamEvent, TokenTrace, generate, stream
from autodeco.errors import AutoDecoError
from autodeco.heads import AutoDecoHeads, TemperatureHead, TopPHead
from autodeco.modeling import AutoDecoGenerateOutput, AutoDecoModelForCausalLM, AutoDecoOutput
from autodeco.sampling import SamplingParams, sample_tokens, top_p_probs
from autodeco.speculative import Speculation, make_speculation

__version__ = "0.1.0"
__all__ = [
    "AutoDecoError",
    "AutoDecoGenerateOutput",
    "AutoDecoHeads",
    "AutoDecoModelForCausalLM",
    "AutoDecoOutput",
    "Completion",
    "SamplingParams",
    "Speculation",
    "StreamEvent",
    "TemperatureHead",
    "TokenTrace",
    "TopPHead",
    "generate",
    "make_speculation",
    "sample_tokens",
    "stream",
    "top_p_probs",
]
