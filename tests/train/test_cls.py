"""`stage: cls`: a tiny BERT (tokenizer trained on the data) on an imbalanced 3-class CSV, with and without balanced
class weights; metrics equal scikit-learn's on the saved predictions; a decoder with LoRA on text pairs through
`lmforge predict`; multi-label and regression metrics; bad rows counted with file and row."""

from __future__ import annotations

import csv
import json
import random

import pytest

from lmforge.cli import main
from tests.conftest import write_jsonl

pytestmark = pytest.mark.slow  # training runs

WORDS = {"sports": ["goal", "match", "team", "score", "coach", "league"],
         "weather": ["rain", "sunny", "storm", "wind", "cloud", "snow"],
         "food": ["bread", "soup", "apple", "cheese", "salad", "pasta"]}
COMMON = ["the", "a", "today", "we", "saw", "some", "very", "and", "it", "was"]


def _text(rng: random.Random, label: str) -> str:
    keyword = rng.choice(WORDS[label])
    noise = rng.choice([w for other, ws in WORDS.items() if other != label for w in ws]) if rng.random() < 0.3 \
        else rng.choice(COMMON)
    return " ".join(rng.sample(COMMON, 4) + [keyword, noise])


@pytest.fixture(scope="module")
def news_csv(tmp_path_factory) -> str:
    """540 rows, sports:weather:food = 1:2:6."""
    rng = random.Random(0)
    rows = [{"text": _text(rng, label), "label": label}
            for label, n in (("sports", 60), ("weather", 120), ("food", 360)) for _ in range(n)]
    rng.shuffle(rows)
    path = tmp_path_factory.mktemp("cls") / "news.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def bert_args(data: str, out, **extra) -> list[str]:
    args = {"stage": "cls", "from_scratch": True, "model_type": "bert", "train_tokenizer": True,
            "tokenizer_vocab_size": 320, "tokenizer_special_tokens": ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"],
            "dataset": data, "cutoff_len": 32, "val_size": 0.25, "per_device_train_batch_size": 32,
            "learning_rate": 3e-3, "num_train_epochs": 4, "eval_strategy": "epoch", "save_strategy": "no",
            "logging_steps": 5, "output_dir": str(out), "report_to": "none", "disable_tqdm": True, "seed": 0,
            "plot_loss": True, **extra}
    out_args = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in args.items()]
    return out_args + [f"config_overrides.{k}={v}" for k, v in {
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 64}.items()]


def recall(out, label: str) -> float:
    return json.load(open(out / "classification_report.json"))["report"][label]["recall"]


def test_balanced_class_weights_raise_minority_recall_and_metrics_match_sklearn(news_csv, tmp_path):
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support
    from transformers import AutoModelForSequenceClassification

    plain, weighted = tmp_path / "plain", tmp_path / "weighted"
    assert main(["train", *bert_args(news_csv, plain)]) == 0
    assert main(["train", *bert_args(news_csv, weighted, class_weights="balanced", save_strategy="epoch",
                                     load_best_model_at_end=True, metric_for_best_model="f1_weighted")]) == 0
    assert recall(weighted, "sports") > recall(plain, "sports") + 0.3
    for out in (plain, weighted):
        results = json.load(open(out / "eval_results.json"))
        rows = [json.loads(line) for line in open(out / "eval_predictions.jsonl")]
        truth, predicted = [r["label"] for r in rows], [r["predicted"] for r in rows]
        p, r, f, _ = precision_recall_fscore_support(truth, predicted, average="weighted", zero_division=0)
        assert results["eval_accuracy"] == pytest.approx(accuracy_score(truth, predicted))
        assert (results["eval_precision_weighted"], results["eval_recall_weighted"], results["eval_f1_weighted"]) == \
            pytest.approx((p, r, f))
    model = AutoModelForSequenceClassification.from_pretrained(weighted)
    assert sorted(model.config.id2label.values()) == ["food", "sports", "weather"]
    assert (weighted / "confusion_matrix.png").exists() and (weighted / "training_loss.png").exists()
    state = json.load(open(weighted / "trainer_state.json"))  # the best epoch by weighted F1 is the one kept
    assert state["best_metric"] == pytest.approx(max(r["eval_f1_weighted"] for r in state["log_history"]
                                                     if "eval_f1_weighted" in r))


def test_bad_rows_are_counted_with_file_and_row(tiny_model_dir, tmp_path, capsys, caplog):
    rows = [{"text": f"good {i} " + ("rain" if i % 2 else "soup"), "label": "weather" if i % 2 else "food"}
            for i in range(40)]
    rows += [{"text": "", "label": "food"}, {"text": "x", "label": "dessert"}, {"text": 5, "label": "food"}]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    # the tokenizer of another model: training one would read the texts as a corpus, which refuses a number
    assert main(["train", *bert_args(str(data), tmp_path / "out", label_names=["food", "weather"],
                                     num_train_epochs=1, train_tokenizer=False,
                                     tokenizer_name_or_path=tiny_model_dir)]) == 0
    log = caplog.text
    assert "skipped 3 records" in log and "'text' is empty (records 40)" in log
    assert "unknown label 'dessert'" in log and "'text' must be text, got int (records 42)" in log


def test_multi_label_and_regression_runs_report_their_metrics(tmp_path):
    rng = random.Random(1)
    multi, reg = [], []
    for _ in range(200):
        labels = rng.sample(list(WORDS), rng.randint(1, 2))
        text = " ".join(rng.choice(WORDS[label]) for label in labels) + " " + " ".join(rng.sample(COMMON, 3))
        multi.append({"text": text, "label": labels})
        value = float(len(labels)) + rng.random() * 0.1
        reg.append({"text": text, "label": value})
    for name, rows, keys in (("multi", multi, ("eval_exact_match", "eval_f1_micro", "eval_f1_macro")),
                             ("reg", reg, ("eval_mse", "eval_mae", "eval_pearson", "eval_spearman"))):
        data = write_jsonl(tmp_path / f"{name}.jsonl", rows)
        out = tmp_path / name
        assert main(["train", *bert_args(str(data), out, num_train_epochs=2)]) == 0
        results = json.load(open(out / "eval_results.json"))
        assert all(k in results for k in keys), results


def test_decoder_with_lora_on_text_pairs_trains_and_predicts(tiny_model_dir, tmp_path):
    rng = random.Random(2)
    rows = []
    for _ in range(240):
        a, b = rng.choice(list(WORDS)), rng.choice(list(WORDS))
        rows.append({"question": f"about {rng.choice(WORDS[a])}", "passage": f"it is {rng.choice(WORDS[b])} day",
                     "label": int(a == b)})
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "pairs"
    args = {"stage": "cls", "model_name_or_path": tiny_model_dir, "dataset": str(data), "text_column": "question",
            "text_pair_column": "passage", "finetuning_type": "lora", "lora_rank": 8, "cutoff_len": 32,
            "val_size": 0.2, "per_device_train_batch_size": 16, "learning_rate": 1e-2, "num_train_epochs": 3,
            "eval_strategy": "epoch", "save_strategy": "no", "output_dir": str(out), "report_to": "none",
            "disable_tqdm": True, "seed": 0}
    assert main(["train", *(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in args.items())]) == 0
    assert (out / "adapter_model.safetensors").exists()
    held_out = write_jsonl(tmp_path / "held_out.jsonl", rows[:10])
    assert main(["predict", str(out), str(held_out), "--output", str(tmp_path / "preds.jsonl"), "--text-column",
                 "question", "--text-pair-column", "passage", "--batch-size", "4"]) == 0
    preds = [json.loads(line) for line in open(tmp_path / "preds.jsonl")]
    assert len(preds) == 10 and all(p["predicted"] in ("0", "1") for p in preds)
    assert all(sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-4) for p in preds)


def test_a_lora_classifier_exports_merged_and_loads_as_a_classifier(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmforge.model.classifier import load_classifier

    rows = [{"text": f"it is {w} today", "label": label} for label, ws in WORDS.items() for w in ws] * 4
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "lora"
    args = {"stage": "cls", "model_name_or_path": tiny_model_dir, "dataset": str(data), "finetuning_type": "lora",
            "cutoff_len": 16, "per_device_train_batch_size": 8, "learning_rate": 1e-2, "max_steps": 6,
            "save_strategy": "no", "output_dir": str(out), "report_to": "none", "disable_tqdm": True}
    assert main(["train", *(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in args.items())]) == 0
    assert main(["export", f"model_name_or_path={tiny_model_dir}", f"adapter_name_or_path={out}",
                 f"export_dir={tmp_path / 'export'}"]) == 0
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    merged, tokenizer = load_classifier(str(out))
    batch = AutoTokenizer.from_pretrained(tmp_path / "export")(["it is rain today"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(exported(**batch).logits, merged(**batch).logits, atol=1e-5)
    assert sorted(exported.config.id2label.values()) == ["food", "sports", "weather"]


def test_eval_task_cls_scores_a_labelled_file_like_the_training_run(news_csv, tmp_path):
    out = tmp_path / "model"
    assert main(["train", *bert_args(news_csv, out, class_weights="balanced", num_train_epochs=2)]) == 0
    assert main(["eval", f"model_name_or_path={out}", "task=cls", f"dataset={news_csv}",
                 f"output_dir={tmp_path / 'eval'}", "cutoff_len=32"]) == 0
    results = json.load(open(tmp_path / "eval" / "results.json"))
    rows = [json.loads(line) for line in open(tmp_path / "eval" / "predictions.jsonl")]
    from sklearn.metrics import accuracy_score, f1_score

    truth, predicted = [r["label"] for r in rows], [r["predicted"] for r in rows]
    assert results["rows"] == 540 and results["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert results["f1_weighted"] == pytest.approx(f1_score(truth, predicted, average="weighted"))


def test_the_api_serves_a_classifier_on_v1_classify(news_csv, tmp_path):
    import httpx

    from lmforge.eval.classify import predict_file
    from tests.serve.test_api import start_server

    out = tmp_path / "model"
    assert main(["train", *bert_args(news_csv, out, num_train_epochs=1, plot_loss=False)]) == 0
    texts = ["we saw the team score a goal", "rain and storm today", "very good cheese and bread"]
    data = write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in texts])
    expected = predict_file(str(out), str(data), None)
    proc, base = start_server(str(out), "api_key=k", "served_model_name=news")
    try:
        assert httpx.post(f"{base}/v1/classify", json={"input": texts}).status_code == 401
        reply = httpx.post(f"{base}/v1/classify", json={"input": texts}, headers={"Authorization": "Bearer k"})
        assert reply.status_code == 200, reply.text
        data = reply.json()["data"]
        assert [d["label"] for d in data] == [e["predicted"] for e in expected]
        for d, e in zip(data, expected, strict=True):
            assert d["probabilities"] == pytest.approx(e["probabilities"], abs=1e-5)
        bad = httpx.post(f"{base}/v1/classify", json={"input": texts, "input_pair": ["x"]},
                         headers={"Authorization": "Bearer k"})
        assert bad.status_code == 400 and "input_pair" in bad.json()["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
