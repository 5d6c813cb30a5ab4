"""`lmforge synth` against `lmforge api` on loopback and against a flaky stand-in endpoint: answers written once per
prompt and sample, an interrupted run resumed without repeats, 429/500 retried and counted, judged pairs that
`stage: dpo` trains on."""

from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lmforge.cli import main
from tests.conftest import GREETING, REPLY, write_jsonl

pytestmark = pytest.mark.slow  # servers


def synth(out, data, url: str, **extra) -> int:
    args = {"teacher_base_url": url, "teacher_model": "teacher", "output_dir": str(out), "dataset": str(data),
            "temperature": 0.0, "max_tokens": 16, "concurrency": 3, **extra}
    return main(["synth", *(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in args.items())])


def lines(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


@pytest.fixture(scope="module")
def greeter_server(greeter_dir):
    from tests.serve.test_api import start_server

    proc, base = start_server(greeter_dir, "served_model_name=teacher")
    yield base + "/v1"
    proc.terminate()
    proc.wait(timeout=30)


def test_answer_writes_one_record_per_prompt_and_sample_and_resumes_without_repeats(greeter_server, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [
        {"messages": [{"role": "user", "content": GREETING if i % 2 == 0 else f"Question {i}?"}]} for i in range(6)])
    out = tmp_path / "out"
    assert synth(out, prompts, greeter_server, num_samples=2, max_total_tokens=60) == 0  # stops early: the budget
    first = lines(out / "data.jsonl")
    assert 0 < len(first) < 12 and json.load(open(out / "stats.json"))["stopped_by_token_budget"]
    with open(out / "data.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"id": "cut mid-wri')  # what a kill leaves behind
    assert synth(out, prompts, greeter_server, num_samples=2) == 0
    records = lines(out / "data.jsonl")
    ids = [r["id"] for r in records]
    assert sorted(ids) == sorted(f"{tmp_path / 'prompts.jsonl'}:{i}:{n}" for i in range(6) for n in range(2))
    for r in records:
        assert r["messages"][-1]["role"] == "assistant" and r["messages"][:-1][0]["role"] == "user"
        if r["messages"][0]["content"] == GREETING:
            assert r["messages"][-1]["content"] == REPLY  # the served model's own text
    entry = json.load(open(out / "dataset_info.json"))["synth"]
    assert entry["file_name"] == "data.jsonl"


NEW_INSTRUCTIONS = ["Explain how volcanoes form beneath the ocean.", "List three uses of baking soda at home.",
                    "Write a haiku about autumn rain in the city.", "Compare trains and planes for a short trip.",
                    "Summarise the rules of chess for a child.", "Translate a friendly greeting into French.",
                    "Give advice for a first job interview today.", "Describe the water cycle in simple words."]


class _Teacher(BaseHTTPRequestHandler):
    """A stand-in endpoint: fails with 429 or 500 at random (seeded), else answers; judges pick the longer answer."""

    rng = random.Random(0)
    failures = 0
    rounds = 0
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            fail = self.rng.random() < 0.35
            if fail:
                type(self).failures += 1
        if fail:
            self.send_response(self.rng.choice([429, 500]))
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "busy"}}')
            return
        prompt = body["messages"][-1]["content"]
        if "new, different task instructions" in prompt:  # self-instruct: new ones, a near-copy of a seed, junk
            with self.lock:
                type(self).rounds += 1
                n = type(self).rounds
            count = len(NEW_INSTRUCTIONS)
            fresh = NEW_INSTRUCTIONS[(2 * n) % count], NEW_INSTRUCTIONS[(2 * n + 1) % count]
            text = "\n".join([f"1. {fresh[0]}", "2. Say 0 please now",  # a near-duplicate of a seed
                              "3. Hi", f"4. {fresh[1]}"])
        elif "Answer A:" in prompt:
            a = prompt.split("Answer A:\n", 1)[1].split("\n\nAnswer B:", 1)[0]
            b = prompt.split("Answer B:\n", 1)[1].split("\n\nReply", 1)[0]
            text = "A" if len(a) >= len(b) else "B"
        else:
            text = f"echo: {prompt}"
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}],
                            "usage": {"prompt_tokens": 5, "completion_tokens": 3}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture()
def flaky_teacher():
    _Teacher.failures, _Teacher.rounds = 0, 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Teacher)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_429_and_500_are_retried_and_every_failure_counted(flaky_teacher, tmp_path):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"instruction": f"Say {i}"} for i in range(20)])
    out = tmp_path / "out"
    assert synth(out, data, flaky_teacher, max_retries=8) == 0
    stats = json.load(open(out / "stats.json"))
    assert stats["kept"] == 20 and not stats["failed_requests"]
    assert sum(stats["failed_attempts_by_status"].values()) == _Teacher.failures == stats["retries"] > 0
    assert set(stats["failed_attempts_by_status"]) <= {"429", "500"}
    assert all(r["messages"][-1]["content"] == f"echo: Say {r['record']}" for r in lines(out / "data.jsonl"))


def test_judge_writes_pairs_that_dpo_trains_on(flaky_teacher, tiny_model_dir, tmp_path):
    rows = [{"instruction": f"Explain {i}", "responses": [f"Because {i} is what it is, in detail.", f"No {i}."]}
            for i in range(12)]
    data = write_jsonl(tmp_path / "candidates.jsonl", rows)
    out = tmp_path / "judged"
    assert synth(out, data, flaky_teacher, synth_task="judge", max_retries=8) == 0
    pairs = lines(out / "data.jsonl")
    assert len(pairs) == 12 and all(p["chosen"]["content"].startswith("Because") for p in pairs)
    args = {"stage": "dpo", "model_name_or_path": tiny_model_dir, "template": "chatml", "dataset": "synth",
            "dataset_dir": str(out), "cutoff_len": 64, "output_dir": str(tmp_path / "dpo"), "max_steps": 2,
            "per_device_train_batch_size": 4, "save_strategy": "no", "report_to": "none", "disable_tqdm": True}
    assert main(["train", *(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in args.items())]) == 0


def test_a_bad_endpoint_is_a_config_error(tmp_path, capsys):
    data = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "x"}])
    assert synth(tmp_path / "o", data, "ftp://nowhere") == 2
    assert "must be an http(s) URL" in capsys.readouterr().err


def test_self_instruct_drops_near_duplicates_and_malformed_lines_then_answers(flaky_teacher, tmp_path):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": f"Say {i}"} for i in range(3)] +
                        [{"instruction": "Say 0 please now and here"}])
    out = tmp_path / "self"
    assert synth(out, seeds, flaky_teacher, synth_task="self_instruct", num_instructions=6, max_retries=8,
                 similarity_threshold=0.6) == 0
    stats = json.load(open(out / "stats.json"))
    assert stats["instructions_kept"] == 6
    assert stats["instructions_dropped"]["near-duplicate"] >= 1 and stats["instructions_dropped"][
        "malformed: too short"] >= 1
    kept = [json.loads(line)["instruction"] for line in open(out / "instructions.jsonl")]
    assert len(set(kept)) == 6 and not any(k.startswith("Say 0") or k == "Hi" for k in kept)
    records = lines(out / "data.jsonl")
    assert sorted(r["messages"][0]["content"] for r in records) == sorted(kept)
    assert all(r["messages"][1]["content"] == f"echo: {r['messages'][0]['content']}" for r in records)
