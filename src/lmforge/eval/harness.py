"""The lm-evaluation-harness bridge: harness tasks run through `lm_eval.simple_evaluate` with the model lmforge
loaded (base + adapter, dtype, template), for users whose benchmarks already live in the harness."""

from __future__ import annotations

import logging
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmforge.config.schema import EvalConfig
from lmforge.errors import ConfigError
from lmforge.eval.prompts import prompt_style_is_chat

logger = logging.getLogger(__name__)


def run_harness(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: EvalConfig) -> dict[str, Any]:
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError("Config error: 'harness_tasks' (--harness) needs lm-evaluation-harness: "
                          "pip install 'lmforge[harness]' (or pip install lm_eval).") from None
    e = cfg.eval
    tasks = [t.strip() for t in (e.harness_tasks or "").split(",") if t.strip()]
    manager = TaskManager(include_path=e.harness_include_path) if e.harness_include_path else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"Config error: lm-evaluation-harness has no task '{unknown[0]}'"
                          + (f" (nor does '{e.harness_include_path}')." if e.harness_include_path else
                             "; set 'harness_include_path' to a folder of task YAML files for your own."))
    chat = prompt_style_is_chat(cfg, tokenizer)
    logger.info("lm-evaluation-harness %s: %s (%d-shot%s)", getattr(lm_eval, "__version__", ""), ", ".join(tasks),
                e.n_shot, ", chat template" if chat else "")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=e.batch_size)
    output = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=e.n_shot, limit=cfg.data.max_samples,
                                     task_manager=manager, apply_chat_template=chat, log_samples=False,
                                     random_seed=e.seed, numpy_random_seed=e.seed, torch_random_seed=e.seed,
                                     fewshot_random_seed=e.seed)
    return {"harness": output["results"], "n_shot": output.get("n-shot"), "versions": output.get("versions")}
