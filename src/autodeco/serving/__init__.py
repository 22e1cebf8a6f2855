"""An OpenAI-compatible server with learned decoding: ``autodeco serve``."""
