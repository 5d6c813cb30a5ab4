"""The console's view of a run: one compact metrics line per log event and a progress bar with the step's phase."""

from lmforge.train.runtime.console import StepProgress, metrics_line


def test_a_metrics_line_holds_the_headline_then_the_stage_metrics_in_fixed_columns():
    dpo = {"loss": 0.693147, "grad_norm": 1.25, "learning_rate": 5e-6, "rewards/chosen": 0.01,
           "rewards/rejected": -0.02, "rewards/accuracies": 0.75, "rewards/margins": 0.031, "logps/chosen": -120.5,
           "logps/rejected": -130.2, "logits/chosen": -2.1, "logits/rejected": -2.3, "epoch": 0.5,
           "num_input_tokens_seen": 23456, "tokens_per_second": 5005.24}
    assert metrics_line(10, 100, dpo) == ("step  10/100  loss 0.6931     lr 5.00e-06   grad 1.25       "
                                          "tok/s 5,005      acc 0.75       margin 0.031      epoch 0.50")
    later = {**dpo, "loss": 0.01234, "grad_norm": 0.5, "rewards/accuracies": 1.0, "rewards/margins": 12.5}
    labels = ("loss ", "lr ", "grad ", "tok/s ", "acc ", "margin ", "epoch ")
    columns = [[line.index(" " + label) for label in labels]
               for line in (metrics_line(10, 100, dpo), metrics_line(100, 100, later))]
    assert columns[0] == columns[1]  # the lines stack into a table


def test_timings_spreads_and_bookkeeping_stay_in_the_log_file():
    rl = {"reward": 0.4581, "reward_std": 0.31, "reward/math_verify": 0.34375, "reward_seconds/math_verify": 0.1,
          "kl": 0.0406, "loss": -0.2647, "completion_length_max": 112.0, "rollout_seconds": 3.2,
          "rollout_tokens_per_second": 812.0, "learning_rate": 3e-5}
    line = metrics_line(5, 60, rl)
    assert line == ("step  5/60  loss -0.2647    lr 3.00e-05   reward 0.4581     reward/math_verify 0.3438     "
                    "kl 0.0406")
    summary = {"train_runtime": 221.0, "train_samples_per_second": 57.9, "total_flos": 1.2e12, "train_loss": 0.91,
               "epoch": 22.857}
    assert metrics_line(400, 400, summary) == "step 400/400  train_loss 0.91       epoch 22.86"


def test_the_step_bar_shows_the_phase_of_the_step_under_way(capsys):
    progress = StepProgress(total=60, initial=4, enabled=True, stage="grpo")
    progress.phase("rollout")
    progress.phase("scoring")
    progress.advance()
    progress.close()
    err = capsys.readouterr().err
    assert "grpo:" in err and "4/60" in err and "5/60" in err and "rollout" in err and "scoring" in err
    StepProgress(total=60, initial=0, enabled=False, stage="grpo").phase("update")  # another process: silent
    assert capsys.readouterr().err == ""
