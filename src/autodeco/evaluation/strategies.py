"""Decoding strategies, as named on the command line, and the concrete decodings they sample with.

Fixed strategies map to one :class:`Decoding`: ``greedy``, ``default`` (T=1, P=1), ``static:T[,P]``,
``min_p:M[,T]``, ``dynatemp:LOW,HIGH[,EXPONENT]`` (entropy-based T) and
``autodeco[:temperature_scale=..,top_p_scale=..,t_min=..,t_max=..,p_min=..,p_max=..]``. Three derive
theirs from other results on the same task: ``oracle`` (the paper's protocol: sweep T at P=1, then P
at the best T; tuned on the test set, and flagged so), ``oracle-dev`` (the same sweep on the task's
dev split, then measured on the test problems: a fair oracle) and ``mean`` (static at the mean T and
P that ``autodeco`` used on this task). Decodings with equal settings share their samples (``default`` and
``static:1,1`` are one run), and every decoding uses the same seed for a given problem and sample.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from autodeco.errors import AutoDecoError
from autodeco.sampling import SamplingParams

FIXED_KINDS = ("greedy", "default", "static", "min_p", "dynatemp", "autodeco")
DERIVED_KINDS = ("oracle", "oracle-dev", "mean")
KINDS = FIXED_KINDS + DERIVED_KINDS
AUTODECO_OPTIONS = ("temperature_scale", "top_p_scale", "t_min", "t_max", "p_min", "p_max")
DEFAULT_ORACLE_TEMPERATURES = tuple(round(0.1 * i, 1) for i in range(1, 11))  # the paper: step 0.1 at P=1
DEFAULT_ORACLE_TOP_PS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


@dataclass(frozen=True)
class Decoding:
    """One concrete way to decode. ``key`` names its samples on disk; deterministic decodings
    need one sample per problem."""

    key: str
    params: SamplingParams

    @property
    def deterministic(self) -> bool:
        return self.params.is_greedy

    @property
    def uses_heads(self) -> bool:
        return self.params.decoding == "autodeco"

    def settings(self) -> dict[str, float | str]:
        """What a report shows as this decoding's parameters."""
        p = self.params
        if p.is_greedy:
            return {"decoding": "greedy"}
        if p.decoding == "autodeco":
            return {"decoding": "autodeco", **{name: getattr(p, name) for name in AUTODECO_OPTIONS if getattr(p, name) != getattr(SamplingParams(), name)}}
        if p.decoding == "dynatemp":
            return {"decoding": "dynatemp", "t_min": p.t_min, "t_max": p.t_max, "exponent": p.dynatemp_exponent, "top_p": p.top_p}
        settings: dict[str, float | str] = {"decoding": "static", "temperature": p.temperature, "top_p": p.top_p}
        return {**settings, "min_p": p.min_p} if p.min_p else settings


AUTODECO = Decoding("autodeco", SamplingParams(decoding="autodeco"))  # the learned T and P, unmodified


@dataclass(frozen=True)
class Strategy:
    """A strategy as the user named it; ``decoding`` is None for the derived ones."""

    label: str
    kind: str
    decoding: Decoding | None = None

    @property
    def uses_heads(self) -> bool:
        """Needs the learned T and P: autodeco itself, or mean (derived from autodeco's samples)."""
        return self.kind == "mean" or (self.decoding is not None and self.decoding.uses_heads)


def resolve_baseline(strategies: list[Strategy], baseline: str | None) -> str | None:
    """The label the other strategies are compared with: ``baseline`` if given (it must be one of
    the strategies), else ``autodeco`` when it is among them, else the first (None if there is none)."""
    labels = [s.label for s in strategies]
    if baseline is None:
        return "autodeco" if "autodeco" in labels else next(iter(labels), None)
    if baseline not in labels:
        raise AutoDecoError(f"--baseline {baseline!r} is not among the strategies; choose one of: {', '.join(labels)}")
    return baseline


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError as error:
        raise AutoDecoError(f"{what}: {text!r} is not a number") from error


def _fmt(value: float) -> str:
    return f"{value:g}"


def static_decoding(temperature: float, top_p: float = 1.0, min_p: float = 0.0) -> Decoding:
    """Constant T and P (and min-p); T = 0 is greedy."""
    key = f"static:{_fmt(temperature)},{_fmt(top_p)}" + (f",min_p={_fmt(min_p)}" if min_p else "")
    return Decoding(key, SamplingParams(decoding="static", temperature=temperature, top_p=top_p, min_p=min_p))


def mean_decoding(autodeco_records: list[dict]) -> Decoding:
    """Static decoding at the token-weighted mean T and P (3 decimals) that autodeco used."""
    temperatures = [t for r in autodeco_records for t in r["temperatures"]]
    top_ps = [p for r in autodeco_records for p in r["top_ps"]]
    if not temperatures:
        raise AutoDecoError("the mean strategy needs autodeco samples with at least one token")
    return static_decoding(round(sum(temperatures) / len(temperatures), 3), min(round(sum(top_ps) / len(top_ps), 3), 1.0))


def _fixed(kind: str, args: list[str], label: str) -> Decoding:
    """The decoding of a fixed strategy; ``args`` are its comma-separated arguments."""
    if kind == "greedy" or kind == "default":
        if args:
            raise AutoDecoError(f"strategy {label!r} takes no arguments")
        return Decoding("greedy", SamplingParams(decoding="greedy")) if kind == "greedy" else static_decoding(1.0, 1.0)
    if kind == "static":
        if not 1 <= len(args) <= 2:
            raise AutoDecoError(f"strategy {label!r}: write static:T or static:T,P (e.g. static:0.6,0.95)")
        return static_decoding(*(_number(a, f"strategy {label!r}") for a in args))
    if kind == "min_p":
        if not 1 <= len(args) <= 2:
            raise AutoDecoError(f"strategy {label!r}: write min_p:M or min_p:M,T (e.g. min_p:0.1,1.0)")
        min_p, temperature = _number(args[0], f"strategy {label!r}"), _number(args[1], f"strategy {label!r}") if len(args) == 2 else 1.0
        return static_decoding(temperature, 1.0, min_p)
    if kind == "dynatemp":
        if not 2 <= len(args) <= 3:
            raise AutoDecoError(f"strategy {label!r}: write dynatemp:LOW,HIGH or dynatemp:LOW,HIGH,EXPONENT (e.g. dynatemp:0.3,1.2)")
        low, high, exponent = (_number(a, f"strategy {label!r}") for a in (*args, "1")[:3])
        key = f"dynatemp:{_fmt(low)},{_fmt(high)},{_fmt(exponent)}"
        return Decoding(key, SamplingParams(decoding="dynatemp", t_min=low, t_max=high, dynatemp_exponent=exponent))
    options = {}
    for arg in args:
        name, sep, value = arg.partition("=")
        if not sep or name not in AUTODECO_OPTIONS:
            raise AutoDecoError(f"strategy {label!r}: {arg!r} is not one of {', '.join(o + '=VALUE' for o in AUTODECO_OPTIONS)}")
        options[name] = _number(value, f"strategy {label!r}")
    if not options:
        return AUTODECO
    key = "autodeco:" + ",".join(f"{k}={_fmt(v)}" for k, v in sorted(options.items()))
    return Decoding(key, SamplingParams(decoding="autodeco", **options))


def _is_argument(piece: str) -> bool:
    """Whether a comma-separated piece is an argument (``0.95``, ``t_max=2``) rather than a name."""
    if "=" in piece:
        return True
    try:
        float(piece)
    except ValueError:
        return False
    return True


def _unknown_strategy(name: str) -> str:
    """The error message for a name that is no strategy, with the closest one if it looks like a typo."""
    close = difflib.get_close_matches(name, KINDS, n=1)
    return f"unknown strategy {name!r}; strategies are: {', '.join(KINDS)}" + (f"; did you mean {close[0]!r}?" if close else "")


def parse_strategies(text: str) -> list[Strategy]:
    """``greedy,default,static:0.6,0.95,oracle,oracle-dev,mean,autodeco`` -> strategies, in order.

    Commas separate strategies and also their arguments: a number or a ``key=value`` belongs to
    the strategy before it; any other piece must be a strategy name.
    """
    groups: list[list[str]] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if piece.partition(":")[0] in KINDS:
            groups.append([piece])
        elif groups and _is_argument(piece):
            groups[-1].append(piece)
        else:
            raise AutoDecoError(_unknown_strategy(piece.partition(":")[0]))
    if not groups:
        raise AutoDecoError(f"no strategies given; choose from: {', '.join(KINDS)}")
    strategies, seen = [], set()
    for group in groups:
        label = ",".join(group)
        kind, _, first = group[0].partition(":")
        args = ([first] if first else []) + group[1:]
        if label in seen:
            continue
        seen.add(label)
        if kind in DERIVED_KINDS:
            if args:
                raise AutoDecoError(f"strategy {kind!r} takes no arguments (set the oracle's grids with --oracle-temperatures/--oracle-top-ps)")
            strategies.append(Strategy(label, kind))
        else:
            try:
                decoding = _fixed(kind, args, label)
            except AutoDecoError as error:  # SamplingParams' own checks: say which strategy
                message = str(error)
                raise AutoDecoError(message if message.startswith("strategy") else f"strategy {label!r}: {message}") from None
            strategies.append(Strategy(label, kind, decoding))
    return strategies


def parse_grid(text: str, what: str) -> tuple[float, ...]:
    """``0.2,0.6,1.0`` -> sorted unique values."""
    values = sorted({_number(v.strip(), what) for v in text.split(",") if v.strip()})
    if not values:
        raise AutoDecoError(f"{what} is empty; give comma-separated values such as 0.2,0.6,1.0")
    return tuple(values)
