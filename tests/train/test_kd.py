"""`stage: kd` end to end: a tiny student distilled from a tiny teacher ends closer to the teacher (held-out KL) than
the same student fine-tuned on the same data; a teacher with another tokenizer exits 2."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmforge.cli import main
from lmforge.config.data import DataArguments
from lmforge.data.collate import SftCollator
from lmforge.data.examples import build_examples
from lmforge.model.distill_loss import distillation_loss

pytestmark = pytest.mark.slow  # training runs


def run_args(stage: str, student: str, out, **extra) -> list[str]:
    args = {"stage": stage, "model_name_or_path": student, "template": "chatml", "dataset": "lmforge_sft_quickstart",
            "max_samples": 200, "cutoff_len": 64, "output_dir": str(out), "per_device_train_batch_size": 8,
            "learning_rate": 1e-2, "max_steps": 30, "logging_steps": 10, "save_strategy": "no", "report_to": "none",
            "disable_tqdm": True, "seed": 0, **extra}
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in args.items()]


@torch.no_grad()
def held_out_kl(student_dir: str, teacher_dir: str) -> float:
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    rows = build_examples(DataArguments(dataset="lmforge_sft_quickstart_heldout", cutoff_len=64, max_samples=64),
                          tokenizer, 0, "sft").train
    batch = SftCollator(tokenizer.pad_token_id)([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    student, teacher = (AutoModelForCausalLM.from_pretrained(d).eval() for d in (student_dir, teacher_dir))
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    hs, ht = student.model(**kwargs).last_hidden_state, teacher.model(**kwargs).last_hidden_state
    return distillation_loss(hs, student.lm_head.weight, ht, teacher.lm_head.weight, batch["labels"]).item()


def test_distillation_brings_the_student_closer_to_the_teacher_than_sft(greeter_base_dir, chat_model_dir, tmp_path):
    kd, sft = tmp_path / "kd", tmp_path / "sft"
    assert main(["train", *run_args("kd", greeter_base_dir, kd, teacher_model=chat_model_dir,
                                    kd_loss="forward_kl", kd_alpha=0.9, kd_temperature=1.0)]) == 0
    assert main(["train", *run_args("sft", greeter_base_dir, sft)]) == 0
    start = held_out_kl(greeter_base_dir, chat_model_dir)
    after_kd, after_sft = held_out_kl(str(kd), chat_model_dir), held_out_kl(str(sft), chat_model_dir)
    assert after_kd < start and after_kd < after_sft - 0.1, (start, after_kd, after_sft)
    log = [json.loads(line) for line in open(kd / "trainer_log.jsonl") if '"loss"' in line]
    assert log[-1]["loss"] < log[0]["loss"]


def test_a_teacher_with_another_tokenizer_exits_2(greeter_base_dir, llava_dir, tmp_path, capsys):
    assert main(["train", *run_args("kd", greeter_base_dir, tmp_path / "kd", teacher_model=llava_dir)]) == 2
    assert "do not share a tokenizer" in capsys.readouterr().err


def test_on_policy_distillation_trains_on_the_students_samples_reproducibly(greeter_base_dir, chat_model_dir,
                                                                           tmp_path, monkeypatch):
    from lmforge.train.stages import kd as kd_stage

    drawn = []
    original = kd_stage.OnPolicy.student_batch

    def spy(self, model, inputs, step):
        batch = original(self, model, inputs, step)
        drawn.append((step, batch["input_ids"].shape, int((batch["labels"] != -100).sum())))
        return batch

    monkeypatch.setattr(kd_stage.OnPolicy, "student_batch", spy)
    extra = dict(teacher_model=chat_model_dir, kd_on_policy=True, lmbda=0.5, max_new_tokens=6, max_steps=8,
                 logging_steps=1)
    assert main(["train", *run_args("kd", greeter_base_dir, tmp_path / "a", **extra)]) == 0
    first = list(drawn)
    drawn.clear()
    assert main(["train", *run_args("kd", greeter_base_dir, tmp_path / "b", **extra)]) == 0
    assert first == drawn and 0 < len(first) < 8  # about half the steps, the same ones, the same samples
    assert all(0 < trained <= 8 * 6 for _, _, trained in first)  # only the student's completions are trained
    loss = lambda out: [r["loss"] for r in map(json.loads, open(out / "trainer_log.jsonl")) if "loss" in r]  # noqa: E731
    assert loss(tmp_path / "a") == loss(tmp_path / "b")


def test_on_policy_with_packing_exits_2(greeter_base_dir, chat_model_dir, tmp_path, capsys):
    assert main(["train", *run_args("kd", greeter_base_dir, tmp_path / "kd", teacher_model=chat_model_dir,
                                    kd_on_policy=True, packing=True)]) == 2
    assert "does not work with 'packing'" in capsys.readouterr().err
