"""Hostile data files never crash the reader: JSON nested deep enough to overflow pyarrow's stack or Python's
recursion, bytes that are not UTF-8 and symbolic link loops are errors naming file and line (exit 2 from the CLI, no
traceback); a registry cannot make a run read a file outside its folder."""

from __future__ import annotations

import json
import os

import pytest

from lmforge.cli import main
from lmforge.data.examples import build_examples
from lmforge.data.loading import load_texts
from lmforge.data.registry import resolve_sources
from lmforge.errors import DataError
from tests.data.conftest import data_args

GOOD = {"text": "hello world", "instruction": "Say hi", "output": "Hi"}


def _lines(path, *lines: bytes):
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def _deep(depth: int) -> bytes:
    return b'{"text": "x", "instruction": "a", "output": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_deep_nesting_is_named_by_line_for_every_reader(tmp_path, chat_tok, depth):
    path = _lines(tmp_path / "deep.jsonl", json.dumps(GOOD).encode(), _deep(depth))
    expected = r"deep.jsonl' line 2: JSON nested deeper than 256 levels"
    with pytest.raises(DataError, match=expected):  # pt: before pyarrow, which would kill the process
        load_texts(str(path), str(tmp_path))
    with pytest.raises(DataError, match=expected):  # sft and the other record readers
        build_examples(data_args(dataset=str(path), dataset_dir=str(tmp_path)), chat_tok, seed=0)
    whole = tmp_path / "deep.json"  # one JSON array, over several lines
    whole.write_bytes(b"[\n" + json.dumps(GOOD).encode() + b",\n" + _deep(depth) + b"\n]")
    with pytest.raises(DataError, match=r"deep.json': JSON nested deeper than 256 levels"):
        load_texts(str(whole), str(tmp_path))


def test_brackets_inside_strings_do_not_count(tmp_path):
    path = _lines(tmp_path / "brackets.jsonl", json.dumps({"text": "[" * 5000 + "{" * 5000}).encode())
    assert load_texts(str(path), str(tmp_path))["text"] == ["[" * 5000 + "{" * 5000]


def test_bytes_that_are_not_utf8_are_named_by_line(tmp_path, chat_tok):
    path = _lines(tmp_path / "bad.jsonl", json.dumps(GOOD).encode(), b'{"text": "caf\xe9 \xff", "instruction": "a"}')
    with pytest.raises(DataError, match=r"bad.jsonl' line 2: not UTF-8 text \(byte 13 of it: invalid continuation"):
        load_texts(str(path), str(tmp_path))
    with pytest.raises(DataError, match=r"bad.jsonl' line 2: not UTF-8 text"):
        build_examples(data_args(dataset=str(path), dataset_dir=str(tmp_path)), chat_tok, seed=0)
    array = tmp_path / "bad.json"
    array.write_bytes(b'[\n{"text": "fine"},\n{"text": "\xff"}\n]')
    with pytest.raises(DataError, match=r"bad.json' line 3: not UTF-8 text"):
        build_examples(data_args(dataset=str(array), dataset_dir=str(tmp_path)), chat_tok, seed=0)


def test_symbolic_link_loops_are_named(tmp_path, chat_tok):
    os.symlink(tmp_path / "b.jsonl", tmp_path / "a.jsonl")
    os.symlink(tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    with pytest.raises(DataError, match=r"a.jsonl' is a symbolic link that leads nowhere"):
        load_texts(str(tmp_path / "a.jsonl"), str(tmp_path))
    folder = tmp_path / "folder"
    folder.mkdir()
    _lines(folder / "good.jsonl", json.dumps(GOOD).encode())
    os.symlink(folder / "loop.jsonl", folder / "loop.jsonl")
    with pytest.raises(DataError, match=r"loop.jsonl' cannot be read: Too many levels of symbolic links"):
        build_examples(data_args(dataset=str(folder), dataset_dir=str(tmp_path)), chat_tok, seed=0)


def test_the_cli_exits_2_without_a_traceback(tmp_path, tiny_model_dir, capsys):
    path = _lines(tmp_path / "deep.jsonl", json.dumps(GOOD).encode(), _deep(100_000))
    for stage in ("pt", "sft"):
        extra = ["template=chatml"] if stage == "sft" else []
        assert main(["data", "preview", f"stage={stage}", f"dataset={path}", f"model_name_or_path={tiny_model_dir}",
                     *extra]) == 2
        err = capsys.readouterr().err
        assert "deep.jsonl' line 2: JSON nested deeper" in err and "Traceback" not in err


def test_registry_files_stay_inside_dataset_dir(tmp_path):
    registry, outside = tmp_path / "data", tmp_path / "secret.jsonl"
    registry.mkdir()
    _lines(outside, json.dumps(GOOD).encode())
    _lines(registry / "inside.jsonl", json.dumps(GOOD).encode())
    os.symlink(outside, registry / "link.jsonl")
    (registry / "dataset_info.json").write_text(json.dumps({
        "inside": {"file_name": "inside.jsonl"}, "up": {"file_name": "../secret.jsonl"},
        "absolute": {"file_name": str(outside)}, "link": {"file_name": "link.jsonl"}}))
    assert resolve_sources("inside", str(registry))[0].files == (str(registry / "inside.jsonl"),)
    for name in ("up", "absolute", "link"):
        with pytest.raises(DataError, match=rf"entry '{name}' names file_name .* outside dataset_dir "
                                            rf"'{registry}'.*allow_absolute_file_name: true"):
            resolve_sources(name, str(registry))
    assert resolve_sources("absolute", str(registry), allow_absolute=True)[0].files == (str(outside),)
    for name in ("up", "link"):  # only an absolute path can be allowed
        with pytest.raises(DataError, match="outside dataset_dir"):
            resolve_sources(name, str(registry), allow_absolute=True)
