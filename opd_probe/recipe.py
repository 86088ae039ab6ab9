"""Equivalent settings for a real OPD run on an existing engine (`opd-probe verify --print-recipe verl|trl`).

verl: the paper's reference trainer (thunlp/OPD, a modified verl 0.7; arXiv 2604.13016 App. A.1). TRL: GKDTrainer
with lmbda=1 (fully on-policy student samples) and beta=1 (reverse KL); TRL computes the divergence over the full
vocabulary rather than the student's top-k, so the loss scale differs while the fixed point is the same.
"""

from __future__ import annotations

from .errors import InputError

ENGINES = ("verl", "trl")


def recipe(engine: str, cfg, cross_tokenizer: bool = False) -> str:
    """Settings text for ``engine`` from a VerifyConfig-like object (student, teacher, top_k, loss, lr, ...).
    ``cross_tokenizer``: the teacher has another tokenizer (trl: the GOLD trainer, which aligns the two; verl's
    OPD recipe scores the student's ids and has no such mode)."""
    if engine == "verl" and cross_tokenizer:
        raise InputError("--print-recipe verl: the paper's verl recipe scores the student's token ids, and this "
                         "teacher has another tokenizer", fix="use --print-recipe trl (the GOLD trainer aligns the "
                         "two tokenizations), or pick a teacher from the student's model family")
    k = cfg.top_k if cfg.loss == "topk" else 0
    cold = (f"# cold start first: SFT the student on {cfg.cold_start} teacher rollouts (paper section 5.1)\n"
            if cfg.cold_start else "")
    if engine == "verl":
        return (
            "# thunlp/OPD on_policy_distillation.sh (verl); arXiv 2604.13016 App. A.1\n"
            f"{cold}"
            f"STUDENT_MODEL={cfg.student}\n"
            f"TEACHER_MODEL={cfg.teacher}\n"
            f"LOG_PROB_TOP_K={k}            # 0 = sampled-token OPD\n"
            "TOP_K_STRATEGY=only_stu       # student top-k support\n"
            "REWARD_WEIGHT_MODE=student_p  # weights: student probs renormalised on the top-k\n"
            "ADV_ESTIMATOR=token_reward_direct\n"
            f"N_RESPONSES={cfg.samples}\n"
            f"TEMPERATURE={cfg.temperature}\n"
            "TEACHER_TEMPERATURE=1.0\n"
            f"MAX_RESPONSE_LENGTH={cfg.max_new_tokens}   # cap at the depth where the probe's overlap decays\n"
            "LR=1e-6                       # the paper's value for 1.5B-7B students; verify used "
            f"{cfg.lr:g} for a short run\n"
            "USE_KL=False\n"
            "# actor: entropy_coeff=0, grad_clip=1.0, loss_agg_mode=token-mean, 64 prompts per step, ppo_epochs=1\n"
        )
    if engine == "trl" and cross_tokenizer:
        return (
            "# TRL GOLDTrainer (experimental): on-policy distillation across tokenizers, text spans aligned and\n"
            "# the ULD loss on what exact token matching cannot compare (docs/cross-tokenizer.md)\n"
            f"{cold}"
            "from trl.experimental.gold import GOLDConfig, GOLDTrainer\n"
            "config = GOLDConfig(\n"
            f"    teacher_model='{cfg.teacher}',\n"
            f"    teacher_tokenizer_name_or_path='{cfg.teacher}',\n"
            "    use_uld_loss=True,    # another tokenizer: ULD instead of the token-wise divergence\n"
            "    uld_use_hybrid_loss=True,  # exact divergence on the tokens both vocabularies share\n"
            "    lmbda=1.0,            # always train on the student's own samples (on-policy)\n"
            f"    temperature={cfg.temperature},\n"
            f"    max_completion_length={cfg.max_new_tokens},\n"
            "    learning_rate=1e-6,   # the paper's value for 1.5B-7B students; verify used "
            f"{cfg.lr:g}\n"
            f"    max_grad_norm={cfg.grad_clip},\n"
            ")\n"
            f"trainer = GOLDTrainer(model='{cfg.student}', teacher_model='{cfg.teacher}', args=config, ...)\n"
        )
    if engine == "trl":
        return (
            "# TRL GKDTrainer as on-policy distillation\n"
            f"{cold}"
            "from trl import GKDConfig, GKDTrainer\n"
            "config = GKDConfig(\n"
            "    lmbda=1.0,            # always train on the student's own samples (on-policy)\n"
            "    beta=1.0,             # reverse KL(student || teacher)\n"
            f"    temperature={cfg.temperature},\n"
            f"    max_new_tokens={cfg.max_new_tokens},\n"
            "    learning_rate=1e-6,   # the paper's value for 1.5B-7B students; verify used "
            f"{cfg.lr:g}\n"
            f"    max_grad_norm={cfg.grad_clip},\n"
            "    seq_kd=False,\n"
            ")\n"
            f"trainer = GKDTrainer(model='{cfg.student}', teacher_model='{cfg.teacher}', args=config, ...)\n"
        )
    raise ValueError(engine)
