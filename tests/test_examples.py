"""The shipped examples and the quickstart corpus stay valid."""

import json

import torch

from lmforge.config import load_config
from lmforge.resources.quickstart_corpus import generate
from tests.conftest import QUICKSTART, REPO


def test_quickstart_corpus_is_generated_by_the_project():
    with open(QUICKSTART, encoding="utf-8") as fh:
        shipped = [json.loads(line)["text"] for line in fh]
    assert shipped == generate()


def test_example_configs_validate():
    from lmforge.config.parse import load_eval_config

    stages = {}
    for path in sorted((REPO / "examples").glob("*.yaml")):
        if path.name.startswith("eval_"):
            assert load_eval_config(str(path)).eval.task in ("cmmlu", "benchmark")
            continue
        stages[path.name] = load_config(str(path)).finetuning.stage
    assert stages["pretrain_quickstart.yaml"] == "pt" and stages["sft_quickstart.yaml"] == "sft"
    for stage in ("rm", "dpo", "kto", "ppo", "grpo", "cls"):
        assert stages[f"{stage}_quickstart.yaml"] == stage
    assert (stages["reasoning_sft.yaml"], stages["reasoning_grpo.yaml"]) == ("sft", "grpo")


def _shipped(name: str) -> list:
    with open(REPO / "src" / "lmforge" / "resources" / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_sft_quickstart_data_is_generated_by_the_project_and_held_out_prompts_are_unseen():
    from lmforge.resources.sft_quickstart import generate as generate_sft
    from lmforge.resources.sft_quickstart import heldout

    train, held = _shipped("sft_quickstart.jsonl"), _shipped("sft_quickstart_heldout.jsonl")
    assert train == generate_sft() and held == heldout()
    train_instructions = [r["instruction"] for r in train]
    assert len(set(train_instructions)) == len(train) == 4000
    assert len(held) == 200 and not {r["instruction"] for r in held} & set(train_instructions)


def test_the_held_out_corpus_shares_no_document_with_the_training_corpus():
    from lmforge.resources.quickstart_corpus import heldout

    held = [r["text"] for r in _shipped("quickstart_heldout.jsonl")]
    assert held == heldout() and len(set(held)) == 200
    assert not set(held) & {r["text"] for r in _shipped("quickstart_corpus.jsonl")}


def test_preference_quickstart_data_is_generated_by_the_project():
    from lmforge.resources.preference_quickstart import kto_examples, pairs

    resources = REPO / "src" / "lmforge" / "resources"
    for name, records in (("preference_quickstart.jsonl", pairs()), ("kto_quickstart.jsonl", kto_examples())):
        with open(resources / name, encoding="utf-8") as fh:
            assert [json.loads(line) for line in fh] == records
    assert all(p["chosen"] != p["rejected"] for p in pairs())


def test_tutorial_scale_example_is_about_120m_parameters(tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from lmforge.model.build import count_parameters, scratch_config

    cfg = load_config(str(REPO / "examples" / "pretrain_qwen2_120m.yaml"))
    assert cfg.data.cutoff_len == 512 and cfg.training.gradient_accumulation_steps == 8
    assert cfg.training.lr_scheduler_type.value == "cosine" and cfg.training.warmup_steps > 0

    class Vocab:  # the example trains a 32k tokenizer; the count only needs its size and special ids
        def __len__(self):
            return cfg.model.tokenizer_vocab_size
        eos_token_id = pad_token_id = 0
        bos_token_id = None

    config = scratch_config(cfg.model, Vocab())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total, _ = count_parameters(model)
    assert 100e6 < total < 140e6


def test_cls_quickstart_data_is_generated_by_the_project_and_held_out_lines_are_unseen():
    from lmforge.resources.cls_quickstart import generate, heldout

    train, held = _shipped("cls_quickstart.jsonl"), _shipped("cls_quickstart_heldout.jsonl")
    assert train == generate() and held == heldout()
    counts = {label: sum(r["label"] == label for r in train) for label in ("sports", "weather", "food")}
    assert counts == {"sports": 100, "weather": 200, "food": 600}
    assert not {r["text"] for r in held} & {r["text"] for r in train}


def test_arithmetic_quickstart_is_generated_by_the_project_and_held_out_problems_are_unseen():
    from lmforge.resources.arithmetic_quickstart import FILES, split
    from lmforge.train.rl.rewards import format_reward
    from lmforge.verify.math_answers import check

    sft, rl, held = (_shipped(name) for name in FILES)
    assert (sft, rl, held) == split()
    assert len(sft) == 2 * 3 * 93 and len(rl) == 3 * 31 and len(held) == 3 * 31
    # every SFT question is answered once worked out and once bare (an empty reasoning block, Qwen3's non-thinking
    # layout), so the choice to reason is the model's, and GRPO's `format` reward fails the bare one
    worked = [r for r in sft if "Count" in r["output"]]
    bare = [r for r in sft if r["output"].startswith("<think>\n\n</think>\nThe answer is ")]
    assert len(worked) == len(bare) == 3 * 93
    assert sorted(r["instruction"] for r in worked) == sorted(r["instruction"] for r in bare)
    def layout(records: list[dict]) -> list[float]:
        return format_reward([r["instruction"] for r in records], [r["output"] for r in records])

    assert set(layout(bare)) == {0.0} and set(layout(worked)) == {1.0}

    def problems(records: list[dict]) -> set[str]:  # the numbers and the operation, whatever the phrasing
        return {" ".join(r["instruction"].rstrip("?.").split()[-3:]) for r in records}

    # three disjoint sets: GRPO's problems were never worked out in SFT, the held-out ones appear in neither
    assert not problems(held) & (problems(sft) | problems(rl)) and not problems(sft) & problems(rl)
    # every worked answer is verified correct by the reward that trains on it
    assert all(check(r["output"], r["answer"]) == 1.0 for r in sft + rl + held)


def test_ci_runs_the_readme_set_up_commands():
    """CI installs and tests exactly as the README's two set-up commands say."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Set up", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    install, test = (line.split("#", 1)[0].strip() for line in block.strip().splitlines())
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert f"python -m pip install --quiet {install.removeprefix('pip install ')}" in ci
    assert ci[-1] == test


def test_the_answers_the_readme_scores_are_generated_and_unseen_by_the_reward_model():
    from lmforge.resources.preference_quickstart import pairs, score_examples

    shipped = [json.loads(line) for line in open(REPO / "examples" / "score_quickstart.jsonl", encoding="utf-8")]
    assert shipped == score_examples() and len(shipped) == 8
    trained = {p["instruction"] for p in pairs()}
    assert not {line["messages"][0]["content"] for line in shipped} & trained


def test_the_readme_states_the_pretraining_quickstart_model_it_builds(tmp_path, monkeypatch):
    """The README's vocabulary and parameter count are what `pretrain_quickstart.yaml` builds (its tokenizer trained on
    the corpus as the run trains it; the model built from the config, untrained)."""
    from lmforge.model.build import build_model, count_parameters
    from lmforge.model.tokenizer import setup_tokenizer

    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path))
    cfg = load_config(str(REPO / "examples" / "pretrain_quickstart.yaml"), [f"output_dir={tmp_path / 'out'}"])
    tokenizer = setup_tokenizer(cfg)
    total, _ = count_parameters(build_model(cfg.model, tokenizer))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    vocabulary = f"{len(tokenizer)} tokens of the {cfg.model.tokenizer_vocab_size:,} allowed"
    size = f"{total / 1e6:.1f}M-parameter"
    assert vocabulary in " ".join(readme.split()) and size in readme, (vocabulary, size)
    comment = (REPO / "examples" / "pretrain_quickstart.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert f"~{size}" in comment, comment
