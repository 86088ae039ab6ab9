"""Prompt loading, validation errors, shipped sample sets, and prompt rendering (offline, fast)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from fractions import Fraction
from pathlib import Path

import pytest

from opd_probe.errors import InputError
from opd_probe.prompts import load_prompts, render_prompt_ids, template_hash
from opd_probe.types import ProbePrompt

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_prompts"


def write_jsonl(path: Path, lines: list) -> Path:
    """Write raw lines; dicts/lists are JSON-encoded, strings are written verbatim."""
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines), encoding="utf-8")
    return path


def expect_error(path: Path, where: str | None, *fragments: str) -> InputError:
    with pytest.raises(InputError) as info:
        load_prompts(path)
    err = info.value
    assert err.fix, "every input error must say how to fix it"
    assert str(path) in err.message
    if where:
        assert where in err.message, err.message
    for frag in fragments:
        assert frag in err.message, err.message
    return err


# --- JSONL errors -------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.jsonl", None, "not found")


def test_unknown_extension(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("hello\n")
    expect_error(p, None, "extension")


def test_invalid_json_line_number_counts_blank_lines(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, "", '{"prompt": "b"'])
    expect_error(p, "line 3", "invalid JSON")


def test_blank_lines_are_skipped_and_index_counts_records(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", ["", {"prompt": "a"}, "   ", {"prompt": "b"}, ""])
    prompts = load_prompts(p)
    assert [(x.index, x.id, x.prompt) for x in prompts] == [(0, "0", "a"), (1, "1", "b")]


@pytest.mark.parametrize(
    "record, fragment",
    [
        ([1, 2], "not a JSON object"),
        ("\"just a string\"", "not a JSON object"),
        ({"id": "x"}, "neither"),
        ({"prompt": "a", "messages": [{"role": "user", "content": "a"}]}, "both"),
        ({"prompt": 5}, "'prompt' must be a string"),
        ({"prompt": "   "}, "empty"),
        ({"messages": []}, "non-empty list"),
        ({"messages": "[{\"role\": \"user\", \"content\": \"a\"}]"}, "non-empty list"),  # JSON string only for CSV
        ({"messages": [{"role": "user"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": 1, "content": "b"}]}, "messages[1]"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"prompt": "a", "id": 1.5}, "'id'"),
        ({"prompt": "a", "id": True}, "'id'"),
        ({"prompt": "a", "id": ""}, "'id' is empty"),
        ({"prompt": "a", "answer": [1]}, "'answer'"),
    ],
)
def test_bad_record_names_line(tmp_path, record, fragment):
    p = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, record])
    expect_error(p, "line 2", fragment)


def test_duplicate_id_names_both_lines(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}, {"id": "a", "prompt": "z"}])
    expect_error(p, "line 3", "duplicate id 'a'", "line 1")


def test_duplicate_between_explicit_and_default_id(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}, {"id": 0, "prompt": "y"}])
    expect_error(p, "line 2", "duplicate id '0'")


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
    p = tmp_path / "p.jsonl"
    p.write_text(content)
    expect_error(p, None, "prompt set is empty")


def test_non_utf8(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_bytes(b'{"prompt": "\xff"}\n')
    expect_error(p, None, "UTF-8")


def test_bad_limit(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}])
    with pytest.raises(InputError) as info:
        load_prompts(p, limit=0)
    assert info.value.fix


# --- valid JSONL ---------------------------------------------------------------------------------


def test_jsonl_round_trip_and_normalisation(tmp_path):
    p = write_jsonl(
        tmp_path / "p.json",  # .json is read as JSON Lines too
        [
            {"id": "q1", "prompt": "What is 2+2?", "answer": 4, "extra": {"ignored": True}},
            {"id": 7, "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], "answer": "3/4"},
            {"prompt": "no id", "answer": None},
            {"prompt": "blank answer", "answer": "  "},
            {"prompt": "float answer", "answer": 2.5},
        ],
    )
    prompts = load_prompts(p)
    assert prompts[0] == ProbePrompt(id="q1", index=0, prompt="What is 2+2?", answer="4")
    assert prompts[1] == ProbePrompt(id="7", index=1, messages=(("system", "S"), ("user", "U")), answer="3/4")
    assert prompts[1].as_messages() == [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert [x.id for x in prompts[2:]] == ["2", "3", "4"]
    assert [x.answer for x in prompts[2:]] == [None, None, "2.5"]
    for x in prompts:
        assert ProbePrompt.from_dict(json.loads(json.dumps(x.to_dict()))) == x


def test_limit_keeps_first_n(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"p{i}"} for i in range(10)])
    assert [x.prompt for x in load_prompts(p, limit=3)] == ["p0", "p1", "p2"]
    assert len(load_prompts(p, limit=100)) == 10


# --- CSV ------------------------------------------------------------------------------------------


def test_csv_round_trip(tmp_path):
    p = tmp_path / "p.csv"
    msgs = json.dumps([{"role": "user", "content": "hi, there"}])
    p.write_text(
        'id,prompt,messages,answer,notes\n'
        '007,"What is 2+2?",,4,x\n'
        f',,"{msgs.replace(chr(34), chr(34) * 2)}",,\n'
        '"q3","multi\nline",,,\n',
        encoding="utf-8",
    )
    prompts = load_prompts(p)
    assert prompts[0] == ProbePrompt(id="007", index=0, prompt="What is 2+2?", answer="4")
    assert prompts[1] == ProbePrompt(id="1", index=1, messages=(("user", "hi, there"),))
    assert prompts[2] == ProbePrompt(id="q3", index=2, prompt="multi\nline")


@pytest.mark.parametrize(
    "row, fragment",
    [
        (",,", "neither"),
        ("a,hello,[]", "both"),
        ("a,,not json", "not valid JSON"),
        ('a,,"[""x""]"', "messages[0]"),
        ("a, ,", "empty"),
    ],
)
def test_csv_errors_name_row(tmp_path, row, fragment):
    p = tmp_path / "p.csv"
    p.write_text(f"id,prompt,messages\nz,fine,\n{row}\n", encoding="utf-8")
    expect_error(p, "row 2", fragment)


def test_csv_duplicate_id(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("id,prompt\na,x\nb,y\na,z\n", encoding="utf-8")
    expect_error(p, "row 3", "duplicate id 'a'", "row 1")


def test_csv_header_only_is_empty(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("id,prompt\n", encoding="utf-8")
    expect_error(p, None, "prompt set is empty")


# --- parquet --------------------------------------------------------------------------------------


def test_parquet_round_trip(tmp_path):
    import pandas as pd
    p = tmp_path / "p.parquet"
    pd.DataFrame(
        {
            "id": ["a", None, "c"],
            "prompt": ["What is 2+2?", None, "third"],
            "messages": [None, [{"role": "user", "content": "hi"}], None],
            "answer": [4.0, float("nan"), 2.5],
        }
    ).to_parquet(p)
    prompts = load_prompts(p)
    assert prompts[0] == ProbePrompt(id="a", index=0, prompt="What is 2+2?", answer="4")
    assert prompts[1] == ProbePrompt(id="1", index=1, messages=(("user", "hi"),))
    assert prompts[2] == ProbePrompt(id="c", index=2, prompt="third", answer="2.5")


def test_parquet_json_string_messages_and_int_ids(tmp_path):
    import pandas as pd
    p = tmp_path / "p.parquet"
    pd.DataFrame({"id": [10, 11], "messages": [json.dumps([{"role": "user", "content": "x"}])] * 2}).to_parquet(p)
    assert [(x.id, x.messages) for x in load_prompts(p)] == [("10", (("user", "x"),)), ("11", (("user", "x"),))]


def test_parquet_errors_name_row(tmp_path):
    import pandas as pd
    p = tmp_path / "p.parquet"
    pd.DataFrame({"prompt": ["ok", None], "answer": ["1", "2"]}).to_parquet(p)
    expect_error(p, "row 2", "neither")
    pd.DataFrame({"id": ["a", "a"], "prompt": ["x", "y"]}).to_parquet(p)
    expect_error(p, "row 2", "duplicate id 'a'", "row 1")


def test_corrupt_parquet(tmp_path):
    p = tmp_path / "p.parquet"
    p.write_bytes(b"not parquet at all")
    expect_error(p, None, "parquet")


# --- shipped sample sets and their generator ------------------------------------------------------


def load_generator():
    spec = importlib.util.spec_from_file_location("make_sample_prompts", ROOT / "scripts" / "make_sample_prompts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, minimum, with_answers", [("math.jsonl", 96, True), ("instruct.jsonl", 48, False), ("tiny.jsonl", 8, True)])
def test_shipped_sets_load(name, minimum, with_answers):
    prompts = load_prompts(SAMPLES / name)
    assert len(prompts) >= minimum
    assert len({x.id for x in prompts}) == len(prompts)
    assert all((x.answer is not None) == with_answers for x in prompts)
    assert len({x.prompt or x.messages for x in prompts}) == len(prompts), "prompts must be distinct"


def test_instruct_set_mixes_prompt_and_messages():
    prompts = load_prompts(SAMPLES / "instruct.jsonl")
    assert any(x.prompt for x in prompts)
    assert any(x.messages and x.messages[0][0] == "system" for x in prompts)


def test_math_answers_are_ints_or_reduced_fractions():
    for x in load_prompts(SAMPLES / "math.jsonl"):
        assert re.fullmatch(r"-?\d+|\d+/\d+", x.answer), x
        if "/" in x.answer:
            value = Fraction(x.answer)
            assert value.denominator > 1 and str(value) == x.answer, x  # lowest terms, not an integer
        assert len(x.prompt.split()) <= 60, x
        assert x.prompt.endswith("'Answer: <number>'."), x


def test_math_answers_recomputed_for_parseable_kinds():
    """Independent re-check of the kinds whose numbers can be read back from the text."""
    checked = 0
    for x in load_prompts(SAMPLES / "math.jsonl"):
        if m := re.search(r"remainder when (\d+) is divided by (\d+)", x.prompt):
            expected = int(m[1]) % int(m[2])
        elif m := re.search(r"Solve for x: (\d+)x \+ (\d+) = (-?\d+)", x.prompt):
            expected = (int(m[3]) - int(m[2])) // int(m[1])
            assert int(m[1]) * expected + int(m[2]) == int(m[3])
        elif m := re.search(r"eats (\d+/\d+) of a pizza and \w+ eats (\d+/\d+)", x.prompt):
            expected = 1 - Fraction(m[1]) - Fraction(m[2])
        elif m := re.search(r"(\d+) boxes with (\d+) eggs in each\. (\d+) eggs break and \w+ sells (\d+)\.", x.prompt):
            expected = int(m[1]) * int(m[2]) - int(m[3]) - int(m[4])
        else:
            continue
        assert str(expected) == x.answer, x
        checked += 1
    assert checked >= 30


def test_tiny_is_first_math_prompts():
    math = load_prompts(SAMPLES / "math.jsonl")[:8]
    tiny = load_prompts(SAMPLES / "tiny.jsonl")
    assert [x.id for x in tiny] == [f"tiny-{i}" for i in range(8)]
    assert [(x.prompt, x.answer) for x in tiny] == [(x.prompt, x.answer) for x in math]


def test_generator_is_deterministic_and_matches_shipped_files(tmp_path):
    gen = load_generator()
    first = gen.main(tmp_path / "a")
    second = gen.main(tmp_path / "b")
    assert [p.name for p in first] == ["math.jsonl", "instruct.jsonl", "tiny.jsonl"]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes()
        assert a.read_bytes() == (SAMPLES / a.name).read_bytes(), f"{a.name} is stale: run scripts/make_sample_prompts.py"


# --- rendering ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        ["hello world some text"] * 50,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|endoftext|>", "<|pad|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|pad|>")
    hf.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return hf


def test_render_with_chat_template(tokenizer):
    prompt = ProbePrompt(id="a", index=0, messages=(("system", "be nice"), ("user", "hello world")))
    ids = render_prompt_ids(tokenizer, prompt)
    assert all(isinstance(i, int) for i in ids)
    text = tokenizer.decode(ids)
    assert text == "<|system|>be nice\n<|user|>hello world\n<|assistant|>"
    plain = render_prompt_ids(tokenizer, ProbePrompt(id="b", index=1, prompt="hello"))
    assert tokenizer.decode(plain) == "<|user|>hello\n<|assistant|>"


def test_render_without_chat_template(tokenizer):
    ids = render_prompt_ids(tokenizer, ProbePrompt(id="a", index=0, prompt="some text"), use_chat_template=False)
    assert ids == tokenizer.encode("some text", add_special_tokens=True)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "some text"
    msgs = ProbePrompt(id="b", index=1, messages=(("system", "hello"), ("user", "world")))
    ids = render_prompt_ids(tokenizer, msgs, use_chat_template=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hello\n\nworld"


def test_missing_template_points_to_flag(tokenizer):
    saved = tokenizer.chat_template
    try:
        tokenizer.chat_template = None
        with pytest.raises(InputError) as info:
            render_prompt_ids(tokenizer, ProbePrompt(id="a", index=0, prompt="hello"))
        assert "--no-chat-template" in info.value.fix
        assert template_hash(tokenizer) is None
        # Base-model path still works without a template.
        assert render_prompt_ids(tokenizer, ProbePrompt(id="a", index=0, prompt="hello"), use_chat_template=False)
    finally:
        tokenizer.chat_template = saved


def test_template_hash(tokenizer):
    h = template_hash(tokenizer)
    assert h is not None and re.fullmatch(r"[0-9a-f]{16}", h)
    assert h == template_hash(tokenizer)
