"""The compact GPT, its config, and exact parameter / FLOP accounting."""
from model.config import ConfigError, GPTConfig  # noqa: F401
from model.flops import FlopCounts, ParamCounts, flops_per_token, mfu, param_counts  # noqa: F401
from model.gpt import GPT  # noqa: F401
