import pathlib

import pytest

from lmforge.config import load_config, parse_overrides
from lmforge.config.docs import render_reference
from lmforge.config.schema import key_index
from lmforge.errors import ConfigError

BASE = ["dataset=lmforge_quickstart", "output_dir=out", "from_scratch=true", "model_type=qwen2", "train_tokenizer=true"]


def write(tmp_path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_plus_overrides_command_line_wins(tmp_path):
    path = write(tmp_path, "stage: pt\nfrom_scratch: true\nmodel_type: qwen2\ntrain_tokenizer: true\n"
                 "dataset: lmforge_quickstart\noutput_dir: out\nlearning_rate: 1.0e-4\ncutoff_len: 256\n"
                 "config_overrides: {hidden_size: 64, num_hidden_layers: 2}\n")
    cfg = load_config(path, ["learning_rate=3e-4", "--cutoff_len", "128", "--max_steps=7",
                             "config_overrides.num_hidden_layers=3"])
    assert cfg.training.learning_rate == 3e-4
    assert cfg.data.cutoff_len == 128
    assert cfg.training.max_steps == 7
    assert cfg.model.config_overrides == {"hidden_size": 64, "num_hidden_layers": 3}
    assert cfg.source == path


def test_every_training_argument_passes_through():
    cfg = load_config(None, BASE + ["adam_beta2=0.95", "lr_scheduler_type=cosine", "warmup_steps=5",
                                    "gradient_accumulation_steps=8", "save_strategy=no", "report_to=none"])
    assert cfg.training.adam_beta2 == 0.95
    assert cfg.training.lr_scheduler_type.value == "cosine"
    assert cfg.training.gradient_accumulation_steps == 8
    assert cfg.training.save_strategy.value == "no"  # YAML reads a bare `no` as false; it still means "no"
    # lmforge's defaults where they differ from transformers'
    assert cfg.training.logging_steps == 10


def test_keys_are_unique_across_groups_and_documented():
    index = key_index()  # raises if two groups define the same key
    assert "learning_rate" in index and "cutoff_len" in index and "model_type" in index
    lmforge_keys = [k for k in index.values() if k.group != "training"]
    assert all(k.help for k in lmforge_keys), [k.name for k in lmforge_keys if not k.help]


def test_docs_config_md_is_generated_from_the_dataclasses():
    doc = pathlib.Path(__file__).resolve().parents[2] / "docs" / "config.md"
    assert doc.read_text() == render_reference(markdown=True) + "\n", (
        "docs/config.md is stale: regenerate it with `lmforge help config --markdown > docs/config.md`")


def test_the_stored_reference_does_not_copy_transformers_help():
    """Upstream rewords its help with releases (transformers 5.24 did): the stored reference must not go stale."""
    from lmforge.config.schema import key_index

    doc = render_reference(markdown=True)
    upstream = [k for k in key_index("train").values() if k.group == "training" and len(k.help) > 40]
    assert upstream and not any(" ".join(k.help.split())[:60] in doc for k in upstream)
    assert "`lmforge help train` lists them" in doc
    assert "learning_rate" in render_reference(schema="train")  # the terminal reference lists the installed fields


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("learning_rte=1e-3", "unknown key 'learning_rte'. Did you mean 'learning_rate'?"),
        ("cutof_len=64", "Did you mean 'cutoff_len'?"),
        ("cutoff_len=abc", "'cutoff_len' expects int, but got 'abc'"),
        ("bf16=maybe", "'bf16' expects bool"),
        ("lr_scheduler_type=cosin", "Did you mean 'cosine'?"),
        ("stage=ptt", "'stage' must be one of pt, sft"),
        ("mix_strategy=interleave_undr", "Did you mean 'interleave_under'?"),
    ],
)
def test_bad_keys_and_values_name_the_key_and_suggest(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, BASE + [override])
    assert expected in str(err.value)
    assert "command line" in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["eval_strategy=steps"], "needs evaluation data"),
        (["bf16=true", "fp16=true"], "'bf16' and 'fp16' exclude each other"),
        (["streaming=true"], "'streaming: true' needs 'max_steps'"),
        (["streaming=true", "max_steps=10", "val_size=0.1"], "must be a document count"),
        (["interleave_probs=[0.5,0.5]"], "needs 'mix_strategy: interleave_under'"),
        (["tokenizer_name_or_path=x"], "exclude each other"),
        (["tokenizer_vocab_size=100"], "'tokenizer_vocab_size' must be at least 259"),
        (["val_size=2.5"], "'val_size' must be a fraction"),
        (["cutoff_len=1"], "'cutoff_len' must be at least 2"),
    ],
)
def test_impossible_combinations_are_rejected(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, BASE + overrides)
    assert expected in str(err.value)


def test_model_source_is_required():
    with pytest.raises(ConfigError, match="'model_name_or_path' is required"):
        load_config(None, ["dataset=x", "output_dir=o"])
    with pytest.raises(ConfigError, match="only applies to a model built from scratch"):
        load_config(None, ["dataset=x", "output_dir=o", "model_name_or_path=m", "model_type=qwen2"])
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        load_config(None, ["dataset=x", "output_dir=o", "from_scratch=true", "model_type=qwen2"])


def test_yaml_errors_name_file_and_line(tmp_path):
    path = write(tmp_path, "stage: pt\ndataset: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "run.yaml" in str(err.value) and "line" in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = write(tmp_path, "datset: c4_demo\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"({path})" in str(err.value) and "Did you mean 'dataset'?" in str(err.value)


def test_parse_overrides_forms():
    assert parse_overrides(["a=1", "--b", "x,y", "--c=[1, 2]", "d.e=true", "f="]) == {
        "a": 1, "b": "x,y", "c": [1, 2], "d": {"e": True}, "f": ""}
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--a"])
    with pytest.raises(ConfigError, match="not a key=value"):
        parse_overrides(["oops"])


def test_resume_from_checkpoint_accepts_true():
    assert load_config(None, BASE + ["resume_from_checkpoint=true"]).training.resume_from_checkpoint == "true"
    assert load_config(None, BASE + ["resume_from_checkpoint=false"]).training.resume_from_checkpoint is None


def test_auto_precision_is_off_without_a_gpu():
    import torch

    cfg = load_config(None, BASE + ["bf16=auto", "fp16=auto"])
    if not torch.cuda.is_available():
        assert cfg.training.bf16 is False and cfg.training.fp16 is False
    else:
        assert cfg.training.bf16 != cfg.training.fp16


def test_architecture_mistakes_fail_before_any_data_work():
    with pytest.raises(ConfigError, match="'model_type: qwen3x' is not an architecture transformers knows. Did you "
                                          "mean 'qwen3'?"):
        load_config(None, ["dataset=x", "output_dir=o", "from_scratch=true", "model_type=qwen3x",
                           "train_tokenizer=true"])
    with pytest.raises(ConfigError, match="config_overrides.hiden_size is not a field of the 'llama' config. Did you "
                                          "mean 'hidden_size'?"):
        load_config(None, ["dataset=x", "output_dir=o", "from_scratch=true", "model_type=llama",
                           "train_tokenizer=true", "config_overrides.hiden_size=8"])
    with pytest.raises(ConfigError, match="'model_name_or_path': the directory '/no/such/model' does not exist"):
        load_config(None, ["dataset=x", "output_dir=o", "model_name_or_path=/no/such/model"])


def test_cpu_only_machines_train_on_the_cpu_so_torchrun_forms_a_gloo_group():
    from lmforge.device import accelerator_available

    cfg = load_config(None, BASE)
    assert cfg.training.use_cpu is (not accelerator_available())
    assert load_config(None, BASE + ["use_cpu=false"]).training.use_cpu is False


def test_secrets_are_masked_on_disk_and_read_from_the_environment(tmp_path, monkeypatch):
    from lmforge.config.secrets import SECRETS_ENV, masked, masked_argv

    assert masked({"hub_token": "t", "api_key": "k", "webui_auth": "a:b", "nested": {"db_password": "p"},
                   "tokenizer_name_or_path": "x", "mask_history": True, "hub_model_id": None}) == {
        "hub_token": "***", "api_key": "***", "webui_auth": "***", "nested": {"db_password": "***"},
        "tokenizer_name_or_path": "x", "mask_history": True, "hub_model_id": None}
    assert masked_argv(["lmforge", "train", "c.yaml", "hub_token=t", "--api_key", "k", "--hub_token=t", "x=1"]) == [
        "lmforge", "train", "c.yaml", "hub_token=***", "--api_key", "***", "--hub_token=***", "x=1"]
    saved = tmp_path / "saved.yaml"
    saved.write_text(f"stage: pt\ndataset: lmforge_quickstart\nmodel_type: qwen2\nfrom_scratch: true\n"
                     f"train_tokenizer: true\noutput_dir: {tmp_path}\nhub_token: '***'\n")
    assert load_config(str(saved)).training.hub_token is None  # a masked copy is no token
    monkeypatch.setenv(SECRETS_ENV, '{"hub_token": "from-env"}')
    assert load_config(str(saved)).training.hub_token == "from-env"
    monkeypatch.setenv(SECRETS_ENV, '{"learning_rate": 1}')
    with pytest.raises(ConfigError, match="JSON mapping of secret keys"):
        load_config(str(saved))


def test_a_check_failing_on_a_command_line_override_names_the_command_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("stage: sft\nmodel_name_or_path: m\ndataset: d\noutput_dir: o\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(config), ["cutoff_len=1"])
    assert str(err.value) == "Config error (command line): 'cutoff_len' must be at least 2, got 1."
    with pytest.raises(ConfigError) as err:  # the override clashes with a key of the file: both are named
        load_config(str(config), ["pref_beta=0.2"])
    assert str(err.value).startswith(f"Config error ({config} and the command line): 'pref_beta' does not apply to "
                                     "'stage: sft'")
    config.write_text(config.read_text() + "pref_beta: 0.2\n")
    with pytest.raises(ConfigError) as err:  # all of it in the file
        load_config(str(config), ["learning_rate=1e-4"])
    assert str(err.value).startswith(f"Config error ({config}): 'pref_beta' does not apply")
