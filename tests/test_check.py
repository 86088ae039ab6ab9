"""`opd-probe check` and the preflight checks (issue 15).

Pure checks on hand-built facts (check.py); then preflight on tiny model folders that differ from the student in
exactly one respect (tests/model_variants.py), which must never load a weight; then the command itself."""

from __future__ import annotations

import builtins
import json
import time
from pathlib import Path

import pytest
from clirun import cli
from model_variants import variant

from opd_probe import check
from opd_probe.check import DeviceFacts, Finding, ModelFacts, Plan

REPO = Path(__file__).resolve().parents[1]
TINY_PROMPTS = REPO / "sample_prompts" / "tiny.jsonl"
CPU = DeviceFacts("cpu", "CPU", total_bytes=64 * 2**30, available_bytes=32 * 2**30)
VOCAB = {f"t{i}": i for i in range(100)}
LLAMA = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 100, "tie_word_embeddings": False}


def facts(name="S", role="student", **kw) -> ModelFacts:
    base = dict(name=name, role=role, path=name, config=dict(LLAMA), vocab=dict(VOCAB),
                specials={"bos": ("t0", 0), "eos": ("t0", 0), "pad": ("t1", 1)}, eos_ids=(0,), turn_end=("t0", 0),
                has_chat_template=True, tokenizer_class="Fast", model_type_known=True, weights={},
                context_length=512, rendered=((5, 6, 7),), example_text="<u>\nHi<e>\n<a>\n")
    base.update(kw)
    return ModelFacts(**base)


def codes(found, level=None) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for f in found:
        if level is None or f.level == level:
            out.setdefault(f.code, []).append(f)
    return out


def one(found, code) -> Finding:
    hits = [f for f in found if f.code == code]
    assert len(hits) == 1, (code, hits)
    return hits[0]


# ------------------------------------------------------------------------------------------------ pure: a pair
def test_same_map_is_ok_and_a_padded_head_is_fine():
    s, t = facts(), facts("T", "teacher", config={**LLAMA, "vocab_size": 128})
    assert one(check.pair_findings(s, t, Plan()), "vocab").level == "ok"
    head = one(check.model_findings(t, Plan(), CPU), "head")
    assert head.level == "ok" and "128 rows for 100 tokens" in head.message


def test_same_size_other_map_counts_the_differing_ids():
    other = dict(VOCAB)
    other["t3"], other["t7"] = 7, 3  # two ids swapped: same size, other map
    f = one(check.pair_findings(facts(), facts("T", "teacher", vocab=other), Plan()), "vocab")
    assert f.level == "error" and f.details["differing"] == 2 and f.details["first_ids"] == [3, 7]
    assert "differ at id 3: student 't3' vs teacher 't7'" in f.message and "2 of the student's 100 ids" in f.message


def test_teacher_only_tokens_are_a_warning():
    f = one(check.pair_findings(facts(), facts("T", "teacher", vocab={**VOCAB, "x": 100, "y": 101}), Plan()), "vocab")
    assert f.level == "warn" and "2 token(s)" in f.message


def test_head_smaller_than_the_tokenizer_is_an_error():
    f = one(check.model_findings(facts(config={**LLAMA, "vocab_size": 90}), Plan(), CPU), "head")
    assert f.level == "error" and "90 rows" in f.message


def test_base_student_under_an_instruct_teacher_is_never_rewarded_for_stopping():
    # the ms-swift#9526 pair: the teacher's eos ids include the student's stop (as Qwen2.5-Instruct's
    # generation_config lists <|endoftext|> too), but it ends its turns with another token
    teacher = facts("T", "teacher", eos_ids=(9, 0), turn_end=("<|im_end|>", 9))
    f = one(check.pair_findings(facts(), teacher, Plan()), "stop")
    assert f.level == "warn" and "'<|im_end|>' (id 9)" in f.message and "ms-swift#9526" in f.message
    assert "add id 9" in f.fix


def test_stop_agrees_when_the_teacher_ends_turns_with_the_students_eos():
    assert one(check.pair_findings(facts(), facts("T", "teacher"), Plan()), "stop").level == "ok"


def test_plain_text_prompts_compare_the_teachers_eos():
    teacher = facts("T", "teacher", turn_end=("<|im_end|>", 9))  # its template is not used: eos 0 is what counts
    assert one(check.pair_findings(facts(), teacher, Plan(chat_template=False)), "stop").level == "ok"


def test_student_whose_template_ends_turns_with_a_token_it_does_not_stop_on():
    f = one(check.model_findings(facts(turn_end=("<|im_end|>", 9)), Plan(), CPU), "student-turn-end")
    assert f.level == "warn" and "keeps sampling" in f.message


def test_renderings_compared_not_sources():
    s = facts()
    same = facts("T", "teacher")
    assert one(check.pair_findings(s, same, Plan()), "rendering").level == "ok"
    system = facts("T", "teacher", example_text="<system>\nBe brief.<e>\n<u>\nHi<e>\n<a>\n", rendered=((2, 5, 6, 7),))
    f = one(check.pair_findings(s, system, Plan(example_user_text="Hi")), "rendering")
    assert f.level == "warn" and "system prompt" in f.message and f.details["diff"]
    split = facts("T", "teacher", rendered=((5, 6, 8, 9),), tokenizer_class="Slow")
    f = one(check.pair_findings(s, split, Plan()), "rendering")
    assert f.level == "warn" and "tokenizes differently" in f.message


def test_teacher_context():
    s = facts(rendered=((1,) * 100,))
    plan = Plan(prompts_given=True, max_new_tokens=50)
    assert one(check.pair_findings(s, facts("T", "teacher", context_length=200), plan), "context").level == "ok"
    f = one(check.pair_findings(s, facts("T", "teacher", context_length=120), plan), "context")
    assert f.level == "warn" and "lower --max-new-tokens to 20" in f.fix
    assert one(check.pair_findings(s, facts("T", "teacher", context_length=100), plan), "context").level == "error"
    assert not codes(check.pair_findings(s, facts("T", "teacher", context_length=100), Plan())).get("context")


def test_student_context_names_the_longest_prompt():
    s = facts(rendered=((1,) * 10, (1,) * 500, (1,) * 20))
    f = one(check.model_findings(s, Plan(prompts_given=True), CPU, ["'a' (line/row 1)", "'long' (line/row 2)"]),
            "context")
    assert f.level == "error" and "prompt 'long' (line/row 2) renders to 500 tokens" in f.message
    assert "context of 512 tokens" in f.message and "--max-new-tokens to 12" in f.fix


@pytest.mark.parametrize("kprime, level", [(20, "warn"), (31, "warn"), (32, "ok"), (64, "ok")])
def test_vllm_logprob_limit(kprime, level):
    f = one(check.pair_findings(facts(), facts("T", "teacher"), Plan(backend="vllm", vllm_logprobs=kprime)),
            "logprobs")
    assert f.level == level and f"max_logprobs={kprime}" in f.message and f"--max-logprobs {kprime}" in f.message
    if level == "warn":
        assert "--vllm-logprobs to 32" in f.fix


def test_no_logprob_finding_with_transformers():
    assert "logprobs" not in codes(check.pair_findings(facts(), facts("T", "teacher"), Plan()))


# ------------------------------------------------------------------------------------------------ pure: one model
def test_top_k_larger_than_the_vocabulary():
    f = one(check.model_findings(facts(), Plan(top_k=101), CPU), "top-k")
    assert f.level == "error" and "--top-k 101" in f.message and "--top-k 16" in f.fix


@pytest.mark.parametrize("cfg, trust, level", [
    ({"auto_map": {"AutoModelForCausalLM": "m.M"}, "model_type": "mine"}, False, "error"),
    ({"auto_map": {"AutoModelForCausalLM": "m.M"}}, False, "warn"),
    ({"auto_map": {"AutoModelForCausalLM": "m.M"}, "model_type": "mine"}, True, "info"),
])
def test_remote_code(cfg, trust, level):
    m = facts(config={**LLAMA, **cfg}, model_type_known=cfg.get("model_type", "llama") == "llama")
    assert one(check.model_findings(m, Plan(trust_remote_code=trust), CPU), "remote-code").level == level


def test_config_without_model_type():
    cfg = {k: v for k, v in LLAMA.items() if k != "model_type"}
    f = one(check.model_findings(facts(config=cfg, model_type_known=False), Plan(), CPU), "config")
    assert f.level == "error" and "no model_type" in f.message


def test_parameter_count_from_the_config_is_hand_derived():
    # embeddings 100*64 + untied head 100*64 + 2 layers * (q,o 2*64*64 + k,v 2*64*2*16 + MLP 3*64*128)
    want = 100 * 64 * 2 + 2 * (2 * 64 * 64 + 2 * 64 * 2 * 16 + 3 * 64 * 128)
    assert check.parameters_of(facts()) == (want, "config estimate")
    assert check.parameters_of(facts(weights={"parameters": 123})) == (123, "safetensors header")


def test_memory_estimate_weights_plus_kv_cache():
    m = facts(weights={"parameters": 10**6}, rendered=((1,) * 100,))
    est = check.memory_estimate(m, Plan(batch_size=8, max_new_tokens=156), CPU, 100)
    # KV: 2 (K, V) x 2 layers x 2 KV heads x head_dim 16 x 4 bytes = 512 bytes a token, for 8 x 256 tokens
    assert est["weights_bytes"] == 4 * 10**6 and est["kv_cache_bytes"] == 512 * 8 * 256
    gpu = DeviceFacts("cuda", "GPU", total_bytes=80 * 2**30, available_bytes=70 * 2**30, cuda_available=True,
                      bf16_supported=True)
    assert check.memory_estimate(m, Plan(), gpu, 100)["weights_bytes"] == 2 * 10**6  # auto = bf16 there


def test_memory_levels():
    big = facts(weights={"parameters": 20 * 2**30})  # 80 GiB in float32
    assert one(check.model_findings(big, Plan(), CPU), "memory").level == "error"
    assert one(check.model_findings(big, Plan(device_map="auto"), CPU), "memory").level == "ok"
    tight = facts(weights={"parameters": 8 * 2**30})  # 32 GiB against 32 GiB free
    assert one(check.model_findings(tight, Plan(), CPU), "memory").level == "warn"
    assert one(check.model_findings(facts(), Plan(), CPU), "memory").level == "ok"


@pytest.mark.parametrize("plan, device, level, needle", [
    (Plan(dtype="float8"), CPU, "error", "unknown dtype 'float8'"),
    (Plan(device="cuda"), CPU, "error", "CUDA is not available"),
    (Plan(dtype="float16"), CPU, "warn", "float16 on CPU"),
    (Plan(), CPU, "ok", "float32 on cpu"),
    (Plan(backend="vllm"), CPU, "error", "needs vLLM"),
])
def test_run_findings(plan, device, level, needle):
    found = check.run_findings(plan, device)
    assert any(f.level == level and needle in f.message for f in found), found


def test_exit_codes_and_round_trip():
    ok, warn, err = (Finding(lv, "x", "m") for lv in ("ok", "warn", "error"))
    assert check.exit_code([ok, Finding("info", "x", "m")]) == 0
    assert check.exit_code([ok, warn]) == 1 and check.exit_code([warn, err]) == 2
    assert Finding.from_dict(err.to_dict()) == err
    with pytest.raises(ValueError):
        Finding("fine", "x", "m")


# ------------------------------------------------------------------------------------------------ tiny model folders
CHAT_SYSTEM = ("{{ '<|system|>\nYou are helpful.<|endoftext|>\n' }}"
               "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + "
               "'<|endoftext|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
# A ChatML-like Instruct teacher on the same vocabulary: turns end with <|system|> (id 4), the stand-in for
# <|im_end|>; its eos ids list both (as Qwen2.5-Instruct lists <|im_end|> and <|endoftext|>).
CHAT_INSTRUCT = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + "
                 "'<|system|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")


@pytest.fixture(scope="module")
def student(tiny_model) -> Path:
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def variants(student, tmp_path_factory):
    """name -> a folder that differs from the student in one respect (built from files only: a few ms each)."""
    import tiny_models

    root = tmp_path_factory.mktemp("variants")
    tool_line = tiny_models.CHAT_TEMPLATE.replace(
        "{% for message in messages %}",
        "{% if tools %}{{ '<|system|>\nTools, e.g. {\"name\": \"add\", \"arguments\": {\"a\": 1}}<|endoftext|>\n' }}"
        "{% endif %}{% for message in messages %}", 1)
    other_tok = tiny_models.build_tokenizer(root / "other-tok", variant="other")
    return {
        "other-map": variant(student, root / "other-map", tokenizer_from=other_tok),
        "instruct": variant(student, root / "instruct", chat_template=CHAT_INSTRUCT,
                            tokenizer_config={"eos_token": "<|system|>"}, generation_config={"eos_token_id": [4, 0]}),
        "system-turn": variant(student, root / "system-turn", chat_template=CHAT_SYSTEM),
        "tool-line": variant(student, root / "tool-line", chat_template=tool_line),
        "short-context": variant(student, root / "short-context", config={"max_position_embeddings": 160}),
        "no-template": variant(student, root / "no-template", chat_template=""),
    }


def preflight(student, teachers, **plan):
    from opd_probe.prompts import load_prompts
    from opd_probe.run.preflight import findings

    prompts = load_prompts(plan.pop("prompts")) if "prompts" in plan else None
    return findings(str(student), [str(t) for t in teachers], Plan(**plan), prompts)


def of(found, teacher) -> list[Finding]:
    return [f for f in found if f.teacher == str(teacher)]


def test_a_model_against_itself_has_no_warning(student):
    found = preflight(student, [student], prompts=TINY_PROMPTS)
    assert check.exit_code(found) == 0, [f for f in found if f.level != "ok"]
    assert {"vocab", "stop", "rendering", "context", "memory", "tokens", "dtype"} <= set(codes(found))


def test_each_variant_trips_its_own_check_only(student, variants):
    found = preflight(student, list(variants.values()), prompts=TINY_PROMPTS, max_new_tokens=64)
    bad = {name: sorted({f.code for f in of(found, folder) if f.level in ("warn", "error")})
           for name, folder in variants.items()}
    assert bad == {"other-map": ["vocab"], "instruct": ["rendering", "stop"], "system-turn": ["rendering"],
                   "tool-line": [], "short-context": ["context"], "no-template": []}, bad
    from transformers import AutoTokenizer

    from opd_probe.vocab import vocab_diff

    want = vocab_diff(*(AutoTokenizer.from_pretrained(p).get_vocab() for p in (student, variants["other-map"])))[0]
    assert 0 < len(want) < 512  # same size, the special tokens and the byte alphabet agree, the merges do not
    assert one(of(found, variants["other-map"]), "vocab").details["differing"] == len(want)
    stop = one(of(found, variants["instruct"]), "stop")
    assert "'<|system|>' (id 4)" in stop.message and "add id 4" in stop.fix
    assert "system prompt" in one(of(found, variants["system-turn"]), "rendering").message
    assert "exactly as the student's" in one(of(found, variants["tool-line"]), "rendering").message


def test_short_context_is_an_error_when_the_prompt_alone_does_not_fit(student, variants):
    found = preflight(student, [variants["short-context"]], prompts=TINY_PROMPTS, max_new_tokens=8)
    assert one(of(found, variants["short-context"]), "context").level == "ok"
    found = preflight(variants["short-context"], [student], prompts=TINY_PROMPTS, max_new_tokens=64)
    f = one([f for f in found if f.teacher is None], "context")
    assert f.level == "error" and "context of 160 tokens" in f.message


def test_student_without_a_template_given_chat_prompts(student, variants):
    found = preflight(variants["no-template"], [student], prompts=TINY_PROMPTS)
    f = one([f for f in found if f.teacher is None], "template")
    assert f.level == "error" and "--no-chat-template" in f.fix
    found = preflight(variants["no-template"], [student], prompts=TINY_PROMPTS, chat_template=False)
    assert check.exit_code(found) == 0


@pytest.fixture
def no_weights(monkeypatch):
    """Every way a weight could be read fails the test; .safetensors files may be read up to their header only.
    Yields the per-file byte counts read."""
    import safetensors
    import safetensors.torch
    import torch
    from transformers import AutoModelForCausalLM

    def refuse(*a, **k):
        raise AssertionError("a weight was loaded")

    for obj, name in ((AutoModelForCausalLM, "from_pretrained"), (safetensors, "safe_open"),
                      (safetensors.torch, "load_file"), (safetensors.torch, "load"), (torch, "load")):
        monkeypatch.setattr(obj, name, refuse)
    reads: dict[str, int] = {}
    real_open = builtins.open

    class Counted:
        def __init__(self, f, name):
            self._f, self._name = f, name

        def read(self, n=-1):
            data = self._f.read(n)
            reads[self._name] = reads.get(self._name, 0) + len(data)
            return data

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self._f.close()

        def __getattr__(self, a):
            return getattr(self._f, a)

    def counting_open(file, *a, **k):
        f = real_open(file, *a, **k)
        return Counted(f, str(file)) if str(file).endswith((".safetensors", ".bin")) else f

    monkeypatch.setattr(builtins, "open", counting_open)
    yield reads


def test_check_loads_no_weights(student, variants, no_weights):
    t0 = time.perf_counter()
    run = cli("check", student, *variants.values(), "--prompts", TINY_PROMPTS, "--json")
    seconds = time.perf_counter() - t0
    assert run.code == 1, run.err  # other-map: compare scores it through text alignment (a warning)
    assert no_weights, "the safetensors headers were not read"
    for name, n in no_weights.items():
        data = Path(name).read_bytes()
        assert n <= 8 + int.from_bytes(data[:8], "little") < len(data), (name, n)  # the header, never a tensor
    assert seconds < 10, seconds


def test_check_command_json_lines_and_exit_codes(student, variants):
    run = cli("check", student, student, "--prompts", TINY_PROMPTS, "--json")
    assert run.code == 0, run.out
    lines = [json.loads(line) for line in run.out.splitlines()]
    assert lines and all({"level", "code", "message", "fix", "model", "teacher"} <= set(d) for d in lines)
    assert cli("check", student, variants["instruct"], "--json").code == 1
    other = cli("check", student, variants["other-map"], "--json")
    assert other.code == 1  # another tokenizer: compare aligns it on text (docs/cross-tokenizer.md)
    vocab = [d for d in map(json.loads, other.out.splitlines()) if d["code"] == "vocab"]
    assert vocab[0]["level"] == "warn" and "another tokenizer" in vocab[0]["message"]
    assert vocab[0]["details"]["cross_tokenizer"] is True


def test_check_command_table(student, variants):
    run = cli("check", student, variants["instruct"], variants["other-map"], "--prompts", TINY_PROMPTS)
    assert run.code == 1
    for needle in (f"student {student}", f"teacher {variants['instruct']}: warn", "stop tokens disagree",
                   f"teacher {variants['other-map']}: warn", "another tokenizer", "no weights were loaded"):
        assert needle in run.out.replace("\n", " ") or needle in run.out, (needle, run.out)


def test_check_with_a_missing_teacher_still_checks_the_others(student, tmp_path):
    run = cli("check", student, tmp_path / "nope", student, "--json")
    assert run.code == 2
    lines = [json.loads(line) for line in run.out.splitlines()]
    load = [d for d in lines if d["code"] == "load"]
    assert len(load) == 1 and "does not exist" in load[0]["message"]
    assert any(d["code"] == "vocab" and d["level"] == "ok" for d in lines)


# ------------------------------------------------------------------------------------------------ fail fast
def test_fail_fast_raises_the_first_error_as_the_runs_own_error(student, variants):
    from opd_probe.config import ProbeConfig
    from opd_probe.errors import VocabMismatchError
    from opd_probe.run.preflight import fail_fast, plan_of

    from opd_probe.run.verify import VerifyConfig

    cfg = ProbeConfig(student=str(student), teachers=(str(variants["other-map"]),), out="x", max_new_tokens=8,
                      top_k=4, score_backend="hf")
    assert plan_of(cfg, True) == Plan(max_new_tokens=8, top_k=4, prompts_given=True, alignment="auto")
    assert fail_fast(cfg, cfg.student, cfg.teachers) == []  # compare aligns another tokenizer on text
    vcfg = VerifyConfig(student=str(student), teacher=str(variants["other-map"]), out="x", prompts="p.jsonl")
    assert plan_of(vcfg, True).alignment is None
    with pytest.raises(VocabMismatchError, match="differ at id"):  # verify needs the student's tokenizer
        fail_fast(vcfg, vcfg.student, [vcfg.teacher])


def test_fail_fast_returns_the_warnings_and_never_breaks_a_run(student, variants, monkeypatch):
    from opd_probe.config import ProbeConfig
    from opd_probe.run import preflight

    cfg = ProbeConfig(student=str(student), teachers=(str(variants["instruct"]),), out="x")
    warnings = preflight.fail_fast(cfg, cfg.student, cfg.teachers)
    assert any(w.startswith("preflight: stop tokens disagree") for w in warnings), warnings

    def broken(*a, **k):
        raise RuntimeError("an odd tokenizer")

    monkeypatch.setattr(preflight, "findings", broken)
    assert preflight.fail_fast(cfg, cfg.student, cfg.teachers) == [
        "preflight checks skipped (RuntimeError: an odd tokenizer); opd-probe check --debug shows why"]
