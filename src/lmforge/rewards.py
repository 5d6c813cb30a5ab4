"""The built-in reward functions under their public names (`reward_funcs: lmforge.rewards:exact_match` in a config,
or simply `exact_match`), usable with TRL's trainers too; they live with the RL stages, in
`lmforge.train.rl.rewards`."""

from lmforge.train.rl.rewards import code_exec, contains_reference, exact_match, format_reward, math_verify, token_f1

__all__ = ["code_exec", "contains_reference", "exact_match", "format_reward", "math_verify", "token_f1"]
