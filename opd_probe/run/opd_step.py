"""One training step of `verify`: the student's output head chunked with recomputation, and the three losses.

The head (docs/performance.md "verify's training step"): the naive step materialises (N, V) float32 log-probs
with grad for the whole batch (N response positions, V vocabulary), so its memory grows with N × V. Here the
hidden states that predict response tokens (N, H) go through the head in chunks of C positions under
``torch.utils.checkpoint``: each chunk's forward keeps only its (C, k) outputs and the backward recomputes that
chunk's logits, as fused linear–cross-entropy kernels do (e.g. Liger-Kernel). Extra memory is then a few C × V
buffers, whatever N is; the price is one more head matmul per step. Gradients equal the naive step's
(tests/test_verify.py, < 1e-5 in float32).

The losses, token-mean over the batch's response positions, with p the student's and q the teacher's
next-token distributions at a student-visited state, K = TopK(p), p̃ = p renormalised on K, ŷ the sampled token:

    teacher, topk     sg[p̃(v) (log p(v) − log q(v))] · log p(v) summed over v ∈ K   (thunlp/OPD, arXiv 2604.13016 §2.2)
    teacher, sampled  sg[log p(ŷ) − log q(ŷ)] · log p(ŷ)
    teacher, sampled, another tokenizer   sg[(log p(c) − log q(c)) / |c|] · log p(ŷ), c the chunk of ŷ (run/cross.py)
    control, topk     c · sg[p̃(v)] · log p(v) summed over v ∈ K    (the teacher's log-ratio replaced by a constant c)
    control, sampled  c · log p(ŷ)                                    (a constant negative advantage −c, arXiv 2608.31046)

What the control optimises is derived in docs/verify.md ("The control arm"); the control functions take no
teacher argument, so they cannot read one.
"""

from __future__ import annotations

import numpy as np

from .. import metrics

# Bytes of float32 head work per chunk in the training step: the chunk's logits, its log-softmax and one
# probability buffer (3 × C × V × 4 bytes). 128 MiB: ~75 positions per chunk at V = 150k; measured (docs/performance.md)
# at 0.15 of the naive step's extra memory with 512 positions and 0.06 with 2048; 256 MiB gave 0.29 at 512 positions.
TRAIN_CHUNK_BYTES = 128 * 2**20
STEP_METRICS = ("overlap_ratio", "overlap_mass_student", "overlap_mass_teacher", "entropy_gap", "topk_reverse_kl",
                "sampled_reverse_kl", "top1_agreement", "student_entropy", "teacher_entropy",
                "topk_coverage_student")  # coverage: the verdict reads it to decide whether the ratio is tail noise
CONTROL_METRICS = ("student_entropy", "topk_coverage_student", "sampled_logprob")
LOSSES = ("topk", "sampled")


def chunk_positions(vocab_size: int, budget: int = TRAIN_CHUNK_BYTES) -> int:
    return max(1, budget // (3 * 4 * vocab_size))


def _head_chunk(student, k: int):
    """fn(hidden_CH, targets_C) -> (top-k log-probs (C, k), top-k ids, sampled log-prob (C,), entropy (C,)),
    float32 log-softmax over the tokenizer's vocabulary (head padding rows cut) with the model's logit transform."""
    import torch

    head = student.model.get_output_embeddings()
    V = student.vocab_size

    def fn(hidden_CH, targets_C):
        logits = student.transform.functional(head(hidden_CH)[:, :V].float())
        logp = torch.log_softmax(logits, dim=-1)
        top_lp, top_ids = logp.topk(k, dim=-1)
        sampled = logp.gather(-1, targets_C[:, None]).squeeze(-1)
        with torch.no_grad():
            entropy = -(logp.exp() * logp).sum(-1)
        return top_lp, top_ids, sampled, entropy

    return fn


def head_outputs(student, prompts, responses, k: int, chunked: bool = True, chunk: int | None = None):
    """(top_lp_NK, top_ids_NK, sampled_lp_N, entropy_N) at every response position, differentiable in the
    log-probs. ``chunked=False`` is the naive step (full (N, V) log-probs with grad), kept for the gradient test and
    the memory benchmark."""
    import torch
    from torch.utils.checkpoint import checkpoint

    hidden_NH, targets_N = student.response_hidden(prompts, responses)
    fn = _head_chunk(student, k)
    if not chunked:
        return fn(hidden_NH, targets_N)
    c = chunk or chunk_positions(student.vocab_size)
    parts = [checkpoint(fn, hidden_NH[i:i + c], targets_N[i:i + c], use_reentrant=False)
             for i in range(0, hidden_NH.shape[0], c)]
    return tuple(torch.cat([p[j] for p in parts]) for j in range(4))


def _token_offsets(responses) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([len(r) for r in responses])])


def teacher_loss(student, teacher, prompts, responses, k: int, loss: str, chunked: bool = True):
    """The OPD surrogate on one batch and the probe metrics at its states: (surrogate, row). ``surrogate.backward()``
    gives the reference trainer's gradient; ``row`` holds STEP_METRICS and ``loss``, the reverse KL minimised."""
    import torch

    from ..backends.base import ScoreArrays

    top_lp, top_ids, sampled_lp, entropy = head_outputs(student, prompts, responses, k, chunked)
    if getattr(teacher, "cross", False):
        return _cross_teacher_loss(student, teacher, prompts, responses, k, top_lp, top_ids, sampled_lp, entropy)
    offsets = _token_offsets(responses)
    ids_np = top_ids.detach().cpu().numpy()
    t = ScoreArrays.concat(teacher.score(
        prompts, responses, k=k, query_ids_LQ=[ids_np[offsets[i]:offsets[i + 1]] for i in range(len(responses))]))
    q_at_top = torch.from_numpy(t.query_logprobs_LQ).to(top_lp.device)
    q_sampled = torch.from_numpy(t.sampled_logprob_L).to(top_lp.device)
    states = metrics.per_state_metrics(
        ids_np, top_lp.detach().cpu().numpy(), entropy.cpu().numpy(), sampled_lp.detach().cpu().numpy(),
        t.topk_ids_LK, t.topk_logprobs_LK, t.entropy_L, t.query_logprobs_LQ, t.sampled_logprob_L)
    row = {m: float(np.nanmean(states[m])) for m in STEP_METRICS}
    if loss == "topk":
        w = torch.softmax(top_lp.detach(), dim=-1)  # p̃: student probabilities renormalised on its top-k
        surrogate = (w * (top_lp.detach() - q_at_top) * top_lp).sum(-1).mean()
        row["loss"] = row["topk_reverse_kl"]
    else:
        surrogate = ((sampled_lp.detach() - q_sampled) * sampled_lp).mean()
        row["loss"] = row["sampled_reverse_kl"]
    return surrogate, row


def _cross_teacher_loss(student, teacher, prompts, responses, k, top_lp, top_ids, sampled_lp, entropy):
    """A teacher with another tokenizer (run/cross.py CrossTeacher; only the sampled loss): each student token's
    advantage is its chunk's log q(chunk) − log p(chunk), divided over the chunk's student tokens (the sampled
    loss when every chunk is one token; docs/cross-tokenizer.md). Chunks with no log-ratio contribute nothing."""
    import torch

    states = teacher.states(prompts, responses, set(student.eos_ids()), top_ids.detach().cpu().numpy(),
                            top_lp.detach().cpu().numpy(), entropy.cpu().numpy(), sampled_lp.detach().cpu().numpy(), k)
    log_ratio = torch.from_numpy(np.nan_to_num(states["sampled_reverse_kl"], nan=0.0)).to(sampled_lp)
    surrogate = (log_ratio * sampled_lp).mean()
    row = {m: finite_mean(states[m]) for m in STEP_METRICS + ("aligned", "chunk_unsupported") if m in states}
    row["loss"] = row["sampled_reverse_kl"]
    return surrogate, row


def finite_mean(x: np.ndarray) -> float:
    """Mean over the finite states (NaN where a metric is undefined everywhere: a teacher with another tokenizer
    has no top-k reverse KL)."""
    finite = np.isfinite(x)
    return float(x[finite].mean()) if finite.any() else float("nan")


def control_loss(student, prompts, responses, k: int, loss: str, advantage: float = 1.0, chunked: bool = True):
    """The teacher-free control of the same form: the log-ratio log p − log q replaced by the constant
    ``advantage`` c > 0 (a constant negative advantage −c on every token the student produced or ranks in its
    top-k). No teacher is taken. ``row["loss"]`` is the surrogate's value; the student-side metrics are logged."""
    import torch

    top_lp, _, sampled_lp, entropy = head_outputs(student, prompts, responses, k, chunked)
    if loss == "topk":
        surrogate = advantage * (torch.softmax(top_lp.detach(), dim=-1) * top_lp).sum(-1).mean()
    else:
        surrogate = advantage * sampled_lp.mean()
    row = {"student_entropy": float(entropy.mean()),
           "topk_coverage_student": float(top_lp.detach().exp().sum(-1).mean()),
           "sampled_logprob": float(sampled_lp.detach().mean()), "loss": float(surrogate.detach())}
    return surrogate, row


def sft_loss(student, prompts, responses, chunked: bool = True):
    """Cross-entropy on the response tokens (the cold start), through the same chunked head."""
    _, _, sampled_lp, _ = head_outputs(student, prompts, responses, 1, chunked)
    return -sampled_lp.mean()
