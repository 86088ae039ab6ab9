"""Orchestration: the stages shared by compare, select-prompts and verify, and the three runs built on them."""
