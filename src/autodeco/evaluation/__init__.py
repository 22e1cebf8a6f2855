"""Evaluation: tasks (problems, prompts, verifiers), decoding strategies, metrics, a resumable
runner and the report. ``autodeco eval`` is the command-line entry point."""
