"""The models of a `verify` run: the devices and dtypes (docs/verify.md "Devices and dtypes"), and ``Models``,
the student and teacher loaded on first use, the untouched student again after an arm-seed trained it."""

from __future__ import annotations

import time
from dataclasses import replace

from ..errors import InputError
from .opd_step import chunk_positions

# --dtype auto on CPU picks bf16 (under autocast, float32 master weights) only when a forward pass of the loaded
# student runs at least this much faster in bf16. Not measured: provisional. It keeps tiny models (0.82x) in float32,
# but a SmolLM2-sized model measured 1.16-1.65x interleaved (docs/performance.md), so its choice can flip between runs.
CPU_BF16_MIN_SPEEDUP = 1.3


def check_devices(cfg) -> tuple[str, str]:
    """Resolved (student device, teacher device); exit 2 before anything loads when CUDA is asked for but absent."""
    import torch

    def resolve(name: str, flag: str) -> str:
        if name == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if name.startswith("cuda"):
            if not torch.cuda.is_available():
                raise InputError(f"{flag} {name} was requested but CUDA is not available on this machine "
                                 f"(torch {torch.__version__}, cuda build: {torch.version.cuda or 'none'})",
                                 fix=f"use {flag} cpu (or auto), or run on a machine with a GPU and a CUDA build "
                                     "of torch")
            index = torch.device(name).index
            if index is not None and index >= torch.cuda.device_count():
                raise InputError(f"{flag} {name}: this machine has {torch.cuda.device_count()} GPU(s)",
                                 fix=f"use {flag} cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        elif name != "cpu" and not name.startswith("mps"):
            raise InputError(f"{flag} {name!r} is not a device", fix=f"use {flag} auto, cpu, cuda or cuda:N")
        return name

    s = resolve(cfg.device, "--device")
    return s, resolve(cfg.teacher_device, "--teacher-device") if cfg.teacher_device else s


def cpu_bf16_speedup(student, tokens: int = 128, reps: int = 3) -> float:
    """Measured speed of a bf16-autocast over a float32 forward pass of the loaded student on CPU (one sequence of
    ``tokens`` random ids, best of ``reps``). A matmul alone overstates it: on this project's 2-core AMX machine a
    576 × 2304 matmul ran 3.7× faster in bf16, a whole 135M-parameter forward 1.65×, the zoo's tiny models 0.82×
    (docs/performance.md)."""
    import torch

    ids = torch.randint(0, student.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))

    def best(autocast: bool) -> float:
        times = []
        for _ in range(reps + 1):  # the first call warms up
            t0 = time.perf_counter()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                student.model(input_ids=ids.to(student.device))
            times.append(time.perf_counter() - t0)
        return min(times[1:])

    return best(False) / best(True)


def resolve_dtypes(cfg, device: str) -> tuple[str, str, bool, dict]:
    """(student dtype, teacher dtype, bf16 autocast for the student, note) before loading. --dtype auto: on CUDA
    the student keeps float32 master weights under bf16 autocast (AdamW updates at lr 1e-6 vanish in bf16 weights)
    and the teacher loads in bf16; on CPU the student loads in float32 and ``cpu_bf16_speedup`` then decides
    (``choose_cpu_autocast``)."""
    if cfg.dtype != "auto":
        return cfg.dtype, cfg.dtype, False, {"dtype": cfg.dtype, "why": "--dtype"}
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_bf16_supported():
            return "float32", "bfloat16", True, {"dtype": "bf16 autocast", "why": "CUDA with bf16"}
        return "float32", "float32", False, {"dtype": "float32", "why": "CUDA without bf16"}
    return "float32", "float32", False, {"dtype": "float32", "why": device}


def choose_cpu_autocast(student) -> tuple[bool, dict]:
    """--dtype auto on CPU: bf16 autocast (teacher in bf16) only when the measured forward is at least
    CPU_BF16_MIN_SPEEDUP faster."""
    speedup = cpu_bf16_speedup(student)
    if speedup >= CPU_BF16_MIN_SPEEDUP:
        return True, {"dtype": "bf16 autocast", "why": f"bf16 forward measured {speedup:.2f}x faster"}
    return False, {"dtype": "float32", "why": f"bf16 forward measured {speedup:.2f}x as fast"}


def memory_check(cfg, spec_s, spec_t, devices, dtypes, prompt_tokens: int):
    """The estimate (verify_memory.py) for the planned step on the student's device; exit 2 with a setting that
    fits when it does not. Returns the check as a dict, or None when a config cannot be counted."""
    from ..backends.loading import load_config, resolve_model_path
    from . import verify_memory as vm

    def shape(spec, role):
        path = resolve_model_path(spec, role)
        config = load_config(path, spec, role)
        try:
            return vm.ModelShape.from_config(config, vm.count_parameters(config, spec.trust_remote_code))
        except Exception:  # noqa: BLE001 - a config the meta device cannot build: skip the estimate, not the run
            return None

    s, t = shape(spec_s, "student"), shape(spec_t, "teacher")
    if s is None or t is None:
        return None
    nbytes = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
    act = 2 if dtypes[2] or nbytes[dtypes[0]] == 2 else 4
    plan = vm.Plan(cfg.batch_prompts, cfg.samples, cfg.max_new_tokens, prompt_tokens)
    same = devices[0] == devices[1]
    check = vm.check_memory(s, t if same else None, plan, devices[0], nbytes[dtypes[0]], nbytes[dtypes[1]], act,
                            chunk_positions(s.vocab))
    if not check.fits:
        raise vm.refuse(check, devices[0])
    return check.to_dict()


class Models:
    """The student and the teacher of one run, each loaded on first use with its checks (top-k within the
    vocabulary; the teacher's vocabulary against the student's). ``student()`` is the untouched student: after
    ``trained_student()`` handed it to an arm-seed, the next call loads it again."""

    def __init__(self, cfg, devices: tuple[str, str], progress):
        from .stages import model_spec

        self.cfg, self.devices, self.progress = cfg, devices, progress
        dt_s, dt_t, self.autocast, self.dtype_note = resolve_dtypes(cfg, devices[0])
        self.dtypes = (dt_s, dt_t, self.autocast)  # as planned before loading (the memory estimate's)
        self.spec_s = replace(model_spec(cfg.student, cfg), device=devices[0], dtype=dt_s)
        self.spec_t = replace(model_spec(cfg.teacher, cfg), device=devices[1], dtype=dt_t)
        self.current = None  # the student as last loaded (trained, once an arm-seed took it)
        self.fresh = False  # whether ``current`` is untouched
        self.loaded_teacher = None
        self.warnings: list[str] = []  # the vocabulary check's, once the teacher loaded
        self.cross = None  # (TextPair, prompt map) when the teacher has another tokenizer (run/cross.py)

    def student(self):
        """The untouched student: loaded again after an arm-seed trained it."""
        from ..backends import load_backend_model
        from .stages import check_top_k, free_model

        if self.current is not None and self.fresh:
            return self.current
        if self.current is not None:
            old, self.current = self.current, None
            free_model(old)
        self.progress.log(f"loading student {self.cfg.student}")
        s = load_backend_model("hf", self.spec_s, role="student")
        s.autocast_bf16 = self.autocast
        check_top_k(s, self.cfg.top_k, "student")
        self.current, self.fresh = s, True
        return s

    def trained_student(self):
        """The untouched student, handed to an arm-seed that trains it in place."""
        s = self.student()
        self.fresh = False
        return s

    def teacher(self):
        from ..backends import load_backend_model
        from ..vocab import check_vocab
        from .stages import check_top_k

        if self.loaded_teacher is None:
            self.progress.log(f"loading teacher {self.cfg.teacher}")
            t = load_backend_model("hf", self.spec_t, role="teacher")
            t.model.requires_grad_(False)
            # the vocabulary does not change with training: read it from the student in hand, so a first teacher load
            # inside an arm-seed does not reload (and so forget) the student that arm is training
            check_top_k(t, self.cfg.top_k, "teacher")
            if self.cross is not None:  # another tokenizer: scored through text alignment, chunk-level loss
                from .cross import CrossTeacher

                self.loaded_teacher = CrossTeacher(t, *self.cross)
                return self.loaded_teacher
            student = self.current if self.current is not None else self.student()
            self.warnings = check_vocab(student.vocab(), t.vocab(), self.cfg.teacher)
            self.loaded_teacher = t
        return self.loaded_teacher

    def settle_cpu_dtype(self, student) -> None:
        """--dtype auto on CPU: measured on the loaded student, before the teacher loads (``choose_cpu_autocast``)."""
        if self.cfg.dtype == "auto" and self.devices[0] == "cpu":
            self.autocast, self.dtype_note = choose_cpu_autocast(student)
            student.autocast_bf16 = self.autocast
            if self.autocast:
                self.spec_t = replace(self.spec_t, dtype="bfloat16")
