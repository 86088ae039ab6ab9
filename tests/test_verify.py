"""`opd-probe verify`: the losses and the chunked head on tiny models, the arms, resume, the cold start, bad inputs
and the CLI. The statistics are tested in test_experiment.py."""

import inspect
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from opd_probe import experiment as ex
from opd_probe.backends import hf
from opd_probe.backends.base import ModelSpec, SamplingSettings
from opd_probe.cli import main
from opd_probe.recipe import recipe
from opd_probe.run import arms, opd_step
from opd_probe.run.opd_step import control_loss, sft_loss, teacher_loss
from opd_probe.run.verify import VerifyConfig, run_verify
from opd_probe.run.verify_summary import trends

PROMPTS = "sample_prompts/tiny.jsonl"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def load(path):
    return hf.HFModel.load(ModelSpec(path=str(path), device="cpu", dtype="float32"))


def fixed_batch(student):
    prompts = [[1, 5, 9, 30], [4, 4, 7]]
    gens = student.generate(prompts, SamplingSettings(samples=2, max_new_tokens=8), seed=0)
    return [p for p, g in zip(prompts, gens) for _ in g], [x.response_ids for g in gens for x in g]


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------------------------- the losses
@pytest.mark.parametrize("loss, metric, strict", [("topk", "topk_reverse_kl", True),
                                                  ("sampled", "sampled_reverse_kl", False)])
def test_a_few_steps_lower_the_kl_on_a_fixed_batch(tiny_model, loss, metric, strict):
    student, teacher = load(tiny_model(seed=0)), load(tiny_model(seed=1))
    prompts, responses = fixed_batch(student)
    opt = torch.optim.AdamW(student.model.parameters(), lr=1e-4)
    kls = []
    for _ in range(5):
        surrogate, row = teacher_loss(student, teacher, prompts, responses, k=8, loss=loss)
        kls.append(row[metric])
        opt.zero_grad()
        surrogate.backward()
        opt.step()
    if strict:  # the top-k loss descends its own KL step by step
        assert all(b < a for a, b in zip(kls, kls[1:])), kls
    else:  # the single-sample estimator is noisy on 32 tokens; it still ends lower
        assert kls[-1] < kls[0], kls


def test_self_distillation_has_zero_loss_and_zero_gradient(tiny_model):
    student, teacher = load(tiny_model(seed=4)), load(tiny_model(seed=4))
    prompts, responses = fixed_batch(student)
    for loss in ("topk", "sampled"):
        student.model.zero_grad()
        surrogate, row = teacher_loss(student, teacher, prompts, responses, k=8, loss=loss)
        surrogate.backward()
        assert row["loss"] == pytest.approx(0.0, abs=1e-6)
        assert row["overlap_ratio"] == 1.0
        grad_norm = sum(float((p.grad ** 2).sum()) for p in student.model.parameters() if p.grad is not None) ** 0.5
        # zero up to float noise: the teacher's chunked scorer and the student's training forward round differently
        # (a different teacher gives gradient norms of 10-100 here)
        assert grad_norm < 1e-5


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
@pytest.mark.parametrize("which", ["teacher-topk", "teacher-sampled", "control-topk", "control-sampled", "sft"])
def test_the_chunked_head_gives_the_naive_gradients(tiny_model, monkeypatch, which, arch):
    # head padding, and gemma2's softcap: the chunk must cut padding rows and apply the model's logit transform.
    # llama at logit scale 5: parameter gradients of order 1-10, so float32 rounding of the differently ordered
    # sums stays under the 1e-5 bar; gemma2's gradients reach ~1e3, so it is held to 1e-5 relative to the largest
    kw = dict(head_pad=16, logit_scale=5.0) if arch == "llama" else dict(head_pad=16, softcap=10.0)
    student, teacher = load(tiny_model(arch, seed=0, **kw)), load(tiny_model(arch, seed=1, **kw))
    prompts, responses = fixed_batch(student)
    monkeypatch.setattr(opd_step, "chunk_positions", lambda v, budget=None: 3)  # several chunks, one ragged

    def run(chunked):
        student.model.zero_grad(set_to_none=True)
        arm, _, loss = which.partition("-")
        if arm == "teacher":
            surrogate, _ = teacher_loss(student, teacher, prompts, responses, 8, loss, chunked=chunked)
        elif arm == "control":
            surrogate, _ = control_loss(student, prompts, responses, 8, loss, chunked=chunked)
        else:
            surrogate = sft_loss(student, prompts, responses, chunked=chunked)
        surrogate.backward()
        return float(surrogate.detach()), grads(student.model)

    (v_naive, g_naive), (v_chunk, g_chunk) = run(False), run(True)
    assert v_chunk == pytest.approx(v_naive, rel=1e-6)
    assert g_naive.keys() == g_chunk.keys() and g_naive
    diff = max(float((g_naive[n] - g_chunk[n]).abs().max()) for n in g_naive)
    scale = 1.0 if arch == "llama" else max(float(g.abs().max()) for g in g_naive.values())
    assert diff < 1e-5 * scale, (diff, scale)


def test_the_control_loss_takes_no_teacher():
    assert "teacher" not in inspect.signature(control_loss).parameters


def test_the_topk_control_moves_mass_from_the_top_k_to_the_tail(tiny_model):
    # docs/verify.md: its gradient is c·∇ log P_K (K the student's top-k), so descent lowers the top-k's mass
    student = load(tiny_model(seed=0))
    prompts, responses = fixed_batch(student)
    opt = torch.optim.SGD(student.model.parameters(), lr=1e-4)  # small steps: first order (1e-2 overshoots)
    cover = []
    for _ in range(4):
        surrogate, row = control_loss(student, prompts, responses, 4, "topk")
        cover.append(row["topk_coverage_student"])
        opt.zero_grad()
        surrogate.backward()
        opt.step()
    assert all(b < a for a, b in zip(cover, cover[1:])), cover


# ------------------------------------------------------------------------------------------------- trends
def rows(overlaps, kls):
    return [{"phase": "opd", "step": i + 1, "overlap_ratio": o, "topk_reverse_kl": k}
            for i, (o, k) in enumerate(zip(overlaps, kls))]


def test_trends_are_described_not_decided():
    t = trends(rows([0.5] * 5 + [0.8] * 5, [2.0] * 5 + [1.0] * 5))
    assert t["overlap_rises"] and t["kl_falls"] and t["window_steps"] == 2 and "passed" not in t
    full = trends(rows([1.0] * 10, [0.5] * 10))  # k = vocabulary: the ratio is 1 by construction
    assert full["overlap_rises"] is None
    assert trends([{"phase": "opd", "step": 1, "loss": 0.1}]) == {}  # the control arm logs no teacher metrics


# ------------------------------------------------------------------------------------------------- runs
def small(tmp_path, student, teacher, name="v", **kw):
    base = dict(student=str(student), teacher=str(teacher), out=str(tmp_path / name), prompts=PROMPTS,
                eval_prompts=PROMPTS, eval_limit=3, limit=4, steps=2, eval_every=2, batch_prompts=2, samples=1,
                max_new_tokens=5, lr=1e-3, device="cpu", dtype="float32")
    return VerifyConfig(**{**base, **kw})


def strip_times(rec):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rec["steps"]]


def test_the_control_arm_ignores_the_teacher_and_is_reused_across_teachers(tiny_model, tmp_path):
    s = tiny_model(seed=0)
    a = run_verify(small(tmp_path, s, tiny_model(seed=1), "a", control=True, control_cache=str(tmp_path / "c1")))
    b = run_verify(small(tmp_path, s, tiny_model(seed=2), "b", control=True, control_cache=str(tmp_path / "c2")))
    ca, cb = a.arms["control"][0], b.arms["control"][0]
    assert strip_times(ca) == strip_times(cb) and ca["evals"] == cb["evals"]  # another teacher, the same control
    assert a.arms["teacher"][0]["steps"][0]["loss"] != b.arms["teacher"][0]["steps"][0]["loss"]
    assert "overlap_ratio" not in ca["steps"][0]  # the control's rows carry no teacher metrics
    cached = next((tmp_path / "c1").glob("*/seed0.json"))
    before = cached.stat().st_mtime_ns
    c = run_verify(small(tmp_path, s, tiny_model(seed=2), "c", control=True, control_cache=str(tmp_path / "c1")))
    assert cached.stat().st_mtime_ns == before and c.arms["control"][0]["seconds"] == ca["seconds"]
    exp = c.experiment
    assert exp["intervals"]["teacher_vs_control"] is not None and exp["decision"]["verdict"] == ex.INCONCLUSIVE
    assert c.outcome == ex.INCONCLUSIVE and not c.criteria["passed"]  # 2 steps, 3 problems: never decisive


def test_resume_after_an_interruption_mid_arm(tiny_model, tmp_path, monkeypatch):
    cfg = small(tmp_path, tiny_model(seed=0), tiny_model(seed=1), seeds=2)
    real, calls = arms.run_arm_seed, []

    def interrupted(arm, seed, *a, **kw):
        if calls:
            raise KeyboardInterrupt  # Ctrl-C during the teacher arm's second seed
        calls.append((arm, seed))
        return real(arm, seed, *a, **kw)

    monkeypatch.setattr(arms, "run_arm_seed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_verify(cfg)
    done = tmp_path / "v" / "arms" / "teacher-seed0.json"
    assert done.exists() and not (tmp_path / "v" / "arms" / "teacher-seed1.json").exists()
    first = done.read_text()
    calls.clear()

    def counted(arm, seed, *a, **kw):
        calls.append((arm, seed))
        return real(arm, seed, *a, **kw)

    monkeypatch.setattr(arms, "run_arm_seed", counted)
    res = run_verify(VerifyConfig(**{**cfg.to_dict(), "resume": True}))
    assert calls == [("teacher", 1)]  # only the unfinished arm-seed ran
    assert done.read_text() == first and [r["seed"] for r in res.arms["teacher"]] == [0, 1]
    assert res.experiment["intervals"]["teacher_vs_baseline"]["seeds"] == 2
    with pytest.raises(Exception, match="settings differ"):  # resume checks the settings
        run_verify(VerifyConfig(**{**cfg.to_dict(), "resume": True, "steps": 3}))


def test_retention_is_measured_and_compared(tiny_model, tmp_path):
    res = run_verify(small(tmp_path, tiny_model(seed=0), tiny_model(seed=1), retain_prompts=PROMPTS, retain_limit=2,
                           eval_samples=2))
    iv = res.experiment["intervals"]["retention_teacher_vs_baseline"]
    assert iv is not None and iv["problems"] == 2
    last = res.arms["teacher"][0]["evals"][-1]
    assert len(last["target"]["pass1"]) == 3 and len(last["target"]["avg"]) == 3 and len(last["retain"]["pass1"]) == 2
    assert res.experiment["metric"].startswith("avg@2")
    assert [c["step"] for c in res.experiment["curves"]["teacher"]["retain"]] == [0, 2]


def test_verify_cli_cold_start_then_opd_end_to_end(tiny_model, tmp_path, capsys):
    out, save = tmp_path / "v", tmp_path / "saved"
    code, stdout, err = run_cli(
        ["verify", str(tiny_model(seed=0)), str(tiny_model(seed=1)), "--prompts", PROMPTS, "--eval-prompts", PROMPTS,
         "--eval-limit", "3", "--steps", "3", "--eval-every", "2", "--batch-prompts", "2", "--samples", "2",
         "--max-new-tokens", "6", "--cold-start", "4", "--cold-start-epochs", "2", "--lr", "1e-3", "--probe-top-k",
         "600", "--out", str(out), "--save", str(save), "--json", "--quiet", "--gate"], capsys)
    assert code == 1, err  # a 3-step run is inconclusive, and only "teacher adds signal" passes the gate
    doc = json.loads(stdout)
    assert json.loads((out / "verify.json").read_text()) == doc
    assert doc["outcome"] == ex.INCONCLUSIVE and "3 OPD steps" in doc["experiment"]["decision"]["reasons"][0]
    phases = [r["phase"] for r in doc["steps"]]
    assert phases.count("opd") == 3 and "cold-start" in phases
    assert [e["phase"] for e in doc["evals"]] == ["before", "cold-start", "opd", "opd"]
    cs = doc["arms"]["teacher"][0]["cold_start"]  # the format share before and after SFT, and whether it got there
    assert set(cs) >= {"before", "after", "reached", "epochs_run", "target"} and 0 <= cs["after"]["share"] <= 1
    assert cs["reached"] == (cs["after"]["share"] >= cs["target"]) and 1 <= cs["epochs_run"] <= 2
    assert doc["teacher_accuracy"] is not None
    assert doc["step0"]["top_k"] == 511 and any("capped" in n for n in doc["notes"])  # 512-token vocabulary
    assert doc["prediction"]["status"] in ("go", "caution", "no-go")
    assert (out / "steps.parquet").exists()
    assert AutoModelForCausalLM.from_pretrained(str(save)).config.num_hidden_layers == 2


def test_without_eval_prompts_nothing_is_decided(tiny_model, tmp_path, capsys):
    base = ["verify", str(tiny_model(seed=0)), str(tiny_model(seed=0)), "--prompts", PROMPTS, "--limit", "2",
            "--steps", "1", "--samples", "1", "--batch-prompts", "1", "--max-new-tokens", "4", "--quiet"]
    code, stdout, _ = run_cli(base + ["--out", str(tmp_path / "a")], capsys)
    assert code == 0 and "inconclusive" in stdout
    code, _, _ = run_cli(base + ["--out", str(tmp_path / "b"), "--gate"], capsys)
    assert code == 1


@pytest.mark.parametrize("extra, needle", [
    (["--steps", "0"], "--steps"),
    (["--seeds", "0"], "--seeds"),
    (["--loss", "forward"], "--loss"),
    (["--eval-prompts", "sample_prompts/instruct.jsonl"], "answer"),
    (["--retain-prompts", "no/such/file.jsonl"], "--retain-prompts"),
    (["--print-recipe", "deepspeed"], "--print-recipe"),
    (["--device", "cuda"], "CUDA is not available"),
    (["--teacher-device", "cuda:1"], "CUDA is not available"),
    (["--dtype", "int8"], "--dtype"),
])
def test_verify_bad_input_exits_2(tiny_model, tmp_path, capsys, extra, needle):
    if "cuda" in " ".join(extra) and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run_cli(["verify", str(tiny_model(seed=0)), str(tiny_model(seed=1)), "--prompts", PROMPTS,
                            "--out", str(tmp_path / "v"), "--quiet", *extra], capsys)
    assert code == 2
    assert needle in err and "fix:" in err.lower() and "Traceback" not in err


def test_too_big_for_memory_exits_2_with_a_setting_that_fits(tiny_model, tmp_path, capsys, monkeypatch):
    argv = ["verify", str(tiny_model(seed=0)), str(tiny_model(seed=1)), "--prompts", PROMPTS, "--quiet",
            "--batch-prompts", "8", "--samples", "8", "--max-new-tokens", "360", "--dtype", "float32"]
    # 8 prompts × 8 samples × 360 tokens (inside the context, so the preflight passes) on the tiny model: ~0.7 GB
    # estimated (activations, KV cache, head chunks);
    # one prompt, one sample, 16 tokens: a few MB. A fake machine of 200 MB lies between.
    monkeypatch.setenv("OPD_PROBE_MEMORY_LIMIT", "2e8")
    code, _, err = run_cli(argv + ["--out", str(tmp_path / "v")], capsys)
    assert code == 2 and "GiB is available" in err and "--batch-prompts" in err and "fits the estimate" in err
    assert not (tmp_path / "v" / "arms").exists()  # refused before any arm ran
    monkeypatch.setenv("OPD_PROBE_MEMORY_LIMIT", "1000")
    code, _, err = run_cli(argv + ["--out", str(tmp_path / "w")], capsys)
    assert code == 2 and "even one prompt" in err


def test_memory_estimate_parts_and_smaller_plans():
    from opd_probe.run import verify_memory as vm

    s = vm.ModelShape(params=1000, layers=2, hidden=10, intermediate=20, kv_dim=4, vocab=100)
    e = vm.estimate_bytes(s, None, vm.Plan(2, 3, 10, 5), 4, 2, 4, head_chunk=7)
    tokens = 2 * 3 * 15
    assert e["weights"] == 4000 and e["grads_and_adamw"] == 12000
    assert e["activations"] == tokens * 2 * (80 + 60) * 4 and e["kv_cache"] == tokens * 2 * 2 * 4 * 4
    assert e["head"] == 3 * 7 * 100 * 4 and e["total"] == sum(v for k, v in e.items() if k != "total")
    first = next(vm.smaller_plans(vm.Plan(2, 3, 10, 5)))
    assert (first.batch_prompts, first.samples) == (2, 2)  # samples go first


def test_print_recipe(capsys, tmp_path):
    code, stdout, _ = run_cli(["verify", "s", "t", "--prompts", PROMPTS, "--print-recipe", "verl"], capsys)
    assert code == 0
    assert "LOG_PROB_TOP_K=16" in stdout and "REWARD_WEIGHT_MODE=student_p" in stdout and "--control" in stdout
    cfg = VerifyConfig(student="s", teacher="t", out="", prompts=PROMPTS, loss="sampled", cold_start=500)
    trl = recipe("trl", cfg)
    assert "lmbda=1.0" in trl and "beta=1.0" in trl and "500 teacher rollouts" in trl
    assert "LOG_PROB_TOP_K=0" in recipe("verl", cfg)


def test_print_recipe_carries_the_control_arms_result(tiny_model, tmp_path, capsys):
    run_verify(small(tmp_path, tiny_model(seed=0), tiny_model(seed=1), control=True,
                     control_cache=str(tmp_path / "c")))
    code, stdout, _ = run_cli(["verify", "s", "t", "--prompts", PROMPTS, "--print-recipe", "trl", "--out",
                               str(tmp_path / "v")], capsys)
    assert code == 0 and "teacher − control (no-teacher control arm): +" in stdout or "-" in stdout
    assert "inconclusive" in stdout and "control − untouched student" in stdout


def test_the_topk_control_at_k_equal_v_is_the_untouched_student(tiny_model, tmp_path):
    s = tiny_model(seed=0)
    vocab = len(AutoTokenizer.from_pretrained(str(s)))
    res = run_verify(small(tmp_path, s, tiny_model(seed=1), "kv", control=True, loss="topk", top_k=vocab,
                           probe_top_k=16, control_cache=str(tmp_path / "c")))
    ctrl = res.arms["control"][0]
    assert [r["grad_norm"] for r in ctrl["steps"]] == [0.0] * len(ctrl["steps"])  # no update from float noise
    assert ctrl["evals"][-1]["target"] == res.arms["baseline"]["target"]
    assert any("updates are skipped" in n for n in res.notes)


def test_save_without_eval_prompts_keeps_the_trained_student(tiny_model, tmp_path):
    """The teacher first loads inside the teacher arm here (nothing evaluated it before): that must not reload the
    student the arm is training, or --save would write the untouched one."""
    s = tiny_model(seed=0)
    res = run_verify(small(tmp_path, s, tiny_model(seed=1), "sv", eval_prompts=None, eval_limit=None,
                           save=str(tmp_path / "saved"), lr=1e-2))
    assert not any("read back" in n for n in res.notes)
    saved = AutoModelForCausalLM.from_pretrained(str(tmp_path / "saved"))
    orig = AutoModelForCausalLM.from_pretrained(str(s))
    moved = max(float((a - b).abs().max()) for a, b in zip(saved.parameters(), orig.parameters()))
    assert moved > 0, "--save wrote the untouched student"
