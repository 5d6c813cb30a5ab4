"""Benchmark files: the real CMMLU layout, MMLU and C-Eval layouts, and malformed files with clear errors."""

from __future__ import annotations

import pytest

from lmforge.errors import DataError
from lmforge.eval.benchmarks import load_benchmark, read_questions
from tests.conftest import SHARED_DATA

CMMLU = SHARED_DATA / "cmmlu"


def test_cmmlu_loads_every_subject_with_categories_and_dev_examples():
    bench = load_benchmark("cmmlu", str(CMMLU), n_shot=5)
    assert len(bench.subjects) == 67 and bench.lang == "zh"
    agronomy = next(s for s in bench.subjects if s.key == "agronomy")
    assert (agronomy.name, agronomy.category, len(agronomy.dev)) == ("农学", "Other", 5)
    assert agronomy.dev[0].question == "肉牛屠宰后，胴体的哪个部位肉质较好"
    assert agronomy.dev[0].choices == ["胸", "腹", "大腿", "小腿"] and agronomy.dev[0].answer == "C"
    assert {s.category for s in bench.subjects} == {"STEM", "Humanities", "Social Sciences", "Other"}
    assert sum(len(s.test) for s in bench.subjects) == 11582


def test_task_dir_may_hold_the_task_folder(tmp_path):
    (tmp_path / "cmmlu").symlink_to(CMMLU)
    bench = load_benchmark("cmmlu", str(tmp_path), n_shot=0, subjects=["virology"], max_samples=3)
    assert [s.key for s in bench.subjects] == ["virology"] and len(bench.subjects[0].test) == 3


def test_mmlu_and_ceval_layouts(tmp_path):
    mmlu = tmp_path / "mmlu"
    (mmlu / "dev").mkdir(parents=True)
    (mmlu / "test").mkdir()
    (mmlu / "dev" / "anatomy_dev.csv").write_text('"What is 1+1?",1,2,3,4,B\n')
    (mmlu / "test" / "anatomy_test.csv").write_text('"Which, with a comma?",x,y,z,w,D\nplain,a,b,c,d,A\n')
    bench = load_benchmark("mmlu", str(tmp_path), n_shot=1)
    subject = bench.subjects[0]
    assert (subject.key, subject.name, subject.category, bench.lang) == ("anatomy", "anatomy", "Other", "en")
    assert subject.test[0].question == "Which, with a comma?" and subject.test[0].answer == "D"
    assert subject.dev[0].choices == ["1", "2", "3", "4"]

    ceval = tmp_path / "ceval"
    (ceval / "val").mkdir(parents=True)
    (ceval / "val" / "law_val.csv").write_text("id,question,A,B,C,D,answer,explanation\n0,问题,甲,乙,丙,丁,c,因为\n")
    bench = load_benchmark("ceval", str(tmp_path), split="val", n_shot=0)
    assert (bench.subjects[0].name, bench.subjects[0].test[0].answer) == ("法学", "C")


@pytest.mark.parametrize("content, message", [
    (",Question,A,B,C,Answer\n0,q,a,b,c,E\n", "line 2: answer 'E' is not one of A, B, C"),
    (",Question,A,B,C,D\n0,q,a,b,c,d\n", "the header has no 'answer' column"),
    ("", "the file is empty"),
    (",Question,A,B,C,D,Answer\n", "no questions"),
    (",Question,A,B,C,D,Answer\n0,,a,b,c,d,A\n", "line 2: the question is empty"),
    ("q,a,b,c\n", "must have 6 columns"),
])
def test_malformed_files_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        read_questions(str(path))
    assert str(path) in str(err.value)


def test_missing_dev_file_or_folder_is_a_clear_error(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "x.csv").write_text(",Question,A,B,C,D,Answer\n0,q,a,b,c,d,A\n")
    with pytest.raises(DataError, match="no dev file.*n_shot=0"):
        load_benchmark("mine", str(tmp_path), n_shot=2)
    assert load_benchmark("mine", str(tmp_path), n_shot=0).subjects[0].test[0].answer == "A"
    with pytest.raises(DataError, match="no folder with dev/ and test/"):
        load_benchmark("mine", str(tmp_path / "nowhere"))
