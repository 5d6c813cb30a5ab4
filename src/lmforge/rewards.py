"""The built-in reward functions under their public names (`reward_funcs: lmforge.rewards:exact_match` in a config);
they live with the RL stages, in `lmforge.train.rl.rewards`."""

from lmforge.train.rl.rewards import contains_reference, exact_match, token_f1

__all__ = ["contains_reference", "exact_match", "token_f1"]
