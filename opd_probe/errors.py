"""One error family. Every error says what went wrong and how to fix it; the CLI maps it to exit code 2."""

from __future__ import annotations


class ProbeError(Exception):
    """An error that prevents a verdict. ``fix`` tells the user what to do next."""

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:  # one paragraph: what happened, then what to do
        return self.message if not self.fix else f"{self.message}\nFix: {self.fix}"


class InputError(ProbeError):
    """Bad user input: prompt files, flags, config."""


class ModelLoadError(ProbeError):
    """A model or tokenizer could not be loaded or is unsuitable (not a causal LM, context too short)."""


class VocabMismatchError(ProbeError):
    """Student and teacher tokenizers disagree on the token -> id map."""


class OutputError(ProbeError):
    """The output directory cannot be written, or would overwrite a previous run."""
