"""The online RL stages, `ppo` and `grpo`, in one package.

Reading order: `recipe` (what a run sets up), `loop` (one step: rollout, rewards, advantages, clipped updates; the
checkpoints), `algorithms` (what PPO and GRPO do differently), then the parts: `rollout` (sampling with the KV cache),
`tool_rollout` (multi-turn tool use), `vllm_rollout` (sampling with vLLM), `rewards` (reward functions and models),
`losses`, `optimization` (optimizer, scheduler, clipping, precision) and `distributed` (several processes).
"""
