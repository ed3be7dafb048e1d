"""Every ``layerscope ...`` command line that README.md and docs/*.md show still parses with the current CLI.

The lines come from fenced and indented code blocks and from inline `code` spans. Each is parsed by the real
parser (``cli.app.build_parser``, read the way ``cli.app._main`` reads it) and never run, so a renamed or removed
flag, an unknown option, a choice the command no longer has or a missing required option fails here, named by
file and line. What a command checks only when it runs (that a file exists, a value's range) is not tested.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import re
import shlex
from pathlib import Path

import pytest

from layerscope.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# spans that mention the CLI without being a command line (a test checks they are still there)
NOT_COMMANDS = {
    "layerscope CMD --help",  # docs/performance.md: CMD stands for any command
}
# shell operators: the command ends at the first one (`... | tee log`, `... && layerscope report ...`, `2>&1`)
OPERATORS = {"|", "||", "&&", ";", "&"}
REDIRECT = re.compile(r"^\d*>|^&>")
# how a line starts the CLI: `layerscope`, or `-m layerscope` (python, torchrun, accelerate launch)
MODULES = {"layerscope", "layerscope.cli"}
WRAPPERS = {"time", "/usr/bin/time", "nohup", "timeout", "nice"}  # prefixes that run the command after them
ENV = re.compile(r"^[A-Za-z_]\w*=")  # CUDA_VISIBLE_DEVICES=0 layerscope ...
# a value that stands for one (`<model>`, `$M`, `${K}`, `...`, `FILE`, `N`, `k`): it passes any type check
PLACEHOLDER = re.compile(r"^(<[^<>]+>|\$\{?\w+\}?|\.\.\.|[A-Z][A-Z0-9_]*|[a-z])$")
FENCE = re.compile(r"^ {0,3}(```|~~~)")
SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)


def _strip_comment(line: str) -> str:
    """``line`` without a trailing ``# ...`` (a ``#`` outside quotes, at the start of a word)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _commands(text: str) -> list[list[str]]:
    """The layerscope argv (after ``layerscope``) of each command in one shell line (or span)."""
    try:
        words = shlex.split(_strip_comment(text))
    except ValueError:  # an unbalanced quote (an apostrophe in prose): words as spaces part them
        words = _strip_comment(text).split()
    found, segment = [], []
    for word in [*words, ";"]:
        if word not in OPERATORS:
            segment.append(word)
            continue
        while segment and (segment[0] == "$" or ENV.match(segment[0])):  # `$ ` prompts, env-var prefixes
            segment.pop(0)
        redirect = next((i for i, w in enumerate(segment) if REDIRECT.match(w)), len(segment))
        segment = segment[:redirect]
        if segment and segment[0] == "layerscope":
            found.append(segment[1:])
        elif segment and segment[0] in WRAPPERS and "layerscope" in segment:
            found.append(segment[segment.index("layerscope") + 1 :])
        else:  # python -m layerscope, torchrun ... -m layerscope, accelerate launch ... -m layerscope
            at = next((i for i in range(1, len(segment)) if segment[i - 1] == "-m" and segment[i] in MODULES), None)
            if at is not None:
                found.append(segment[at + 1 :])
        segment = []
    return found


def _unbracket(argv: list[str]) -> list[str]:
    """``argv`` with an optional part written ``[--min-block 15]`` given as it stands inside the brackets."""
    out, inside = [], False
    for word in argv:
        if word.startswith("[-"):
            word, inside = word[1:], True
        if inside and word.endswith("]"):
            word, inside = word[:-1], False
        out.append(word)
    return out


def _shell_lines(path: Path) -> list[tuple[int, str, str]]:
    """(line number, kind, text) of every code line (continuations joined) and inline span of ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    code: list[tuple[int, str]] = []
    prose = []  # the text outside code blocks, code lines blanked so that span offsets keep their line
    fenced = indented = False
    for i, line in enumerate(lines):
        if FENCE.match(line):
            fenced = not fenced
            prose.append("")
            continue
        # an indented block starts after a blank line and lasts while its lines are indented (or blank)
        indented = (line.startswith("    ") and (indented or i == 0 or not lines[i - 1].strip())) or (
            indented and not line.strip()
        )
        if fenced or indented:
            code.append((i + 1, line))
            prose.append("")
        else:
            prose.append(line)
    found = []
    continued = None
    for number, line in code:  # backslash continuations join onto the line they continue
        if continued is not None:
            number, line = continued[0], continued[1] + " " + line.strip()
        continued = (number, line[:-1]) if line.rstrip().endswith("\\") else None
        if continued is None:
            found.append((number, "code", line.strip()))
    text = "\n".join(prose)
    for m in SPAN.finditer(text):
        span = " ".join(m.group(2).split()).replace("\\|", "|")  # a span may wrap; `\|` in a table is `|`
        found.append((text.count("\n", 0, m.start()) + 1, "span", span))
    return sorted(found)


def _doc_commands() -> list[pytest.param]:
    params = []
    for path in DOCS:
        name = path.relative_to(ROOT).as_posix()
        for number, kind, text in _shell_lines(path):
            if text in NOT_COMMANDS:
                continue
            for argv in _commands(text):
                if not argv or argv[0].endswith(":"):  # the CLI's bare name, or a message it prints (`eval: error:`)
                    continue
                where = f"{name}:{number}"
                while where in {p.id for p in params}:  # a second command on the same line
                    where += "+"
                params.append(pytest.param(_unbracket(argv), kind, id=where))
    return params


DOC_COMMANDS = _doc_commands()


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def _placeholder_passes(convert):
    @functools.wraps(convert)  # keeps the name argparse's "invalid int value" message uses
    def wrapped(value):
        return value if PLACEHOLDER.match(value) else convert(value)

    return wrapped


def _parse(argv: list[str], partial: bool) -> None:
    """Parse ``argv`` as ``cli.app._main`` does (SystemExit on an error). ``partial``: the line quotes only part
    of a command (see ``test_doc_command_parses``), so a missing required option is no error there, nor is a
    ``...`` left over or a last option given without its value (``layerscope prune --importance`` in a sentence)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = app.build_parser(only=command if command in app.COMMANDS else None)
    for p in _parsers(parser):
        for action in p._actions:
            if callable(action.type):
                action.type = _placeholder_passes(action.type)
            action.required = action.required and not partial
        for group in p._mutually_exclusive_groups:
            group.required = group.required and not partial
        last = p._option_string_actions.get(argv[-1]) if argv else None
        if partial and last is not None and last.nargs != 0:  # the option named, its value left out
            argv = [*argv, "..."]
    args, unknown = parser.parse_known_args(argv)
    innermost = app._innermost(parser, args)
    if unknown and app._takes_many_paths(innermost):  # compare / report: paths may follow options
        innermost.parse_intermixed_args(argv[argv.index(args.command) + 1 :])
        unknown = []
    unknown = [u for u in unknown if not (partial and u == "...")]
    if unknown:
        innermost.error(f"unrecognized arguments: {' '.join(unknown)}")


def test_the_docs_show_enough_commands_to_check():
    # far fewer would mean the extraction lost its blocks (a changed fence, say), not that the docs lost them
    assert len(DOC_COMMANDS) >= 80, len(DOC_COMMANDS)
    shown = {text for path in DOCS for _, _, text in _shell_lines(path)}
    assert NOT_COMMANDS <= shown, f"no longer in the docs, drop from NOT_COMMANDS: {NOT_COMMANDS - shown}"


@pytest.mark.parametrize("argv, kind", DOC_COMMANDS)
def test_doc_command_parses(argv, kind, capsys):
    # a code line is a whole command; a span in a sentence quotes the part it is about (`layerscope finetune`,
    # `--mode random --seed S`), and `...` stands for options left out: there only what is given is checked
    partial = kind == "span" or "..." in argv
    # a synopsis lists a choice's alternatives as `--mode all|top|random`: each must parse
    for choice in itertools.product(*(a.split("|") if "|" in a else [a] for a in argv)):
        try:
            _parse(list(choice), partial)
            continue
        except SystemExit as e:
            if e.code == 0:  # --help or --version
                continue
        pytest.fail(f"layerscope {shlex.join(choice)}\n{capsys.readouterr().err}", pytrace=False)
