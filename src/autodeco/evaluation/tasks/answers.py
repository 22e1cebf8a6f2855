"""Answer extraction and the verifiers that tasks share: exact, numeric, math, regex."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from autodeco.errors import AutoDecoError

_ANSWER_IS = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (nested braces allowed), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for index in range(begin, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            if depth == 0:
                return text[begin:index].strip()
            depth -= 1
    return None


def extract_answer(text: str) -> str | None:
    """The answer a completion gives: the last ``\\boxed{}``, else what follows the last
    "answer is"/"answer:", else the first non-empty line; None when there is nothing."""
    boxed = last_boxed(text)
    if boxed:
        return boxed
    stated = _ANSWER_IS.findall(text)
    candidate = stated[-1] if stated else next((line for line in text.splitlines() if line.strip()), "")
    candidate = candidate.strip().strip("$").strip().rstrip(".").strip()
    return candidate or None


def parse_number(text: str) -> float | None:
    """The last number in ``text`` (thousands separators allowed), or None."""
    found = _NUMBER.findall(text.replace("$", ""))
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def exact_match(answer: str, reference: str) -> bool:
    """Equal after trimming whitespace and case."""
    return " ".join(answer.split()).casefold() == " ".join(str(reference).split()).casefold()


def numeric_match(answer: str, reference: str, rel_tol: float = 1e-6) -> bool:
    """The last number of the answer equals the reference number (relative tolerance 1e-6)."""
    got, want = parse_number(answer), parse_number(str(reference))
    return got is not None and want is not None and math.isclose(got, want, rel_tol=rel_tol, abs_tol=1e-9)


def math_match(answer: str, reference: str) -> bool:
    """Mathematical equivalence by ``math-verify`` (LaTeX or plain expressions)."""
    from math_verify import parse, verify

    gold = parse(_as_latex(str(reference)))
    predicted = parse(_as_latex(answer))
    return bool(gold) and bool(predicted) and bool(verify(gold, predicted))


def _as_latex(text: str) -> str:
    """Wrap a bare answer in ``$...$`` so math-verify reads it as LaTeX, not as prose."""
    return text if "$" in text or "\\boxed" in text else f"${text}$"


def regex_match(answer: str, reference: str) -> bool:
    """The reference is a regular expression found in the answer."""
    return re.search(reference, answer) is not None


VERIFIERS: dict[str, Callable[[str, str], bool]] = {
    "exact": exact_match,
    "numeric": numeric_match,
    "math": math_match,
    "regex": regex_match,
}


def verifier(name: str) -> Callable[[str, str], bool]:
    """A verifier by name; unknown names are listed in the error."""
    if name not in VERIFIERS:
        raise AutoDecoError(f"unknown verifier {name!r}; use one of {', '.join(VERIFIERS)}")
    return VERIFIERS[name]
