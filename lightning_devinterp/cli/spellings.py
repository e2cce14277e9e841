"""The spellings the command line accepted before it was built from signatures.

jsonargparse names an option after its parameter (``--num_chains``), takes a boolean as a
value (``--mala true``) and a list as one value (``--lrs [1e-3,3e-4]``). The earlier
spellings still work: :meth:`Spellings.rewrite` turns them into jsonargparse's before
parsing. They are dashes for underscores (``--num-chains``), a boolean option alone for true
(``--mala``), a list of numbers as separate values (``--lrs 1e-3 3e-4``), and renamed
options (``--unpaired`` for ``--paired false``, ``--nbeta 30`` for ``--sampler.nbeta 30``).
"""

from __future__ import annotations

import numbers
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: What jsonargparse reads as a boolean value (YAML's words), lower case.
BOOLEAN_WORDS = frozenset({"true", "false", "yes", "no", "on", "off"})


@dataclass
class Spellings:
    """The earlier spellings one subcommand accepts.

    Attributes:
        options: the options built from signatures, by key (``num_chains``).
        flags: those typed as booleans: alone, they mean true.
        lists: those typed as a sequence of numbers: they take separate values.
        renamed: earlier option -> the option, or option and value, that replaces it
            (``--unpaired`` -> ``--paired=false``).
        implied: renamed option -> an option and value it meant as well, unless given
            (``--nbeta`` -> ``--sampler.lr=0.001``: the step size it was used with).
    """

    options: list[str] = field(default_factory=list)
    flags: set[str] = field(default_factory=set)
    lists: set[str] = field(default_factory=set)
    renamed: dict[str, str] = field(default_factory=dict)
    implied: dict[str, str] = field(default_factory=dict)

    def add(self, keys: Iterable[str], *sources: Callable[..., Any]) -> None:
        """Record the options ``keys`` that jsonargparse built from the signatures of
        ``sources`` (a function, and the classes it passes its ``**kwargs`` on to)."""
        hints: dict[str, Any] = {}
        for source in reversed(sources):
            hints.update(_type_hints(source))
        for key in keys:
            self.options.append(key)
            if _is_boolean(hints.get(key)):
                self.flags.add(key)
            if _is_number_list(hints.get(key)):
                self.lists.add(key)

    def rewrite(self, argv: Sequence[str]) -> list[str]:
        """``argv`` (after the subcommand) in jsonargparse's spelling."""
        tokens, out, used = list(argv), [], []
        while tokens:
            token = tokens.pop(0)
            if token == "--":
                out += [token, *tokens]
                break
            if not token.startswith("--"):
                out.append(token)
                continue
            name, equals, value = token.partition("=")
            if name in self.renamed:
                used.append(name)
            name = self.renamed.get(name, "--" + name[2:].replace("-", "_"))
            key = name[2:]
            if equals:
                out.append(f"{name}={value}")
            elif key in self.flags and not (tokens and tokens[0].lower() in BOOLEAN_WORDS):
                out.append(f"{name}=true")
            elif key in self.lists and tokens and not tokens[0].startswith("["):
                values = []
                while tokens and not _is_option(tokens[0]):
                    values.append(tokens.pop(0))
                out.append(f"{name}=[{','.join(values)}]")
            else:
                out.append(name)
        given = {token.partition("=")[0] for token in out}
        implied = dict.fromkeys(self.implied[name] for name in used if name in self.implied)
        return [token for token in implied if token.partition("=")[0] not in given] + out

    def help(self) -> str:
        """The other spellings accepted, for the end of the subcommand's help."""
        lines = ["also accepted:"]
        dashed = ", ".join(f"--{key.replace('_', '-')}" for key in self.options if "_" in key)
        if dashed:
            lines.append(_wrap(f"dashes for underscores: {dashed}"))
        if self.flags:
            example = "mala" if "mala" in self.flags else min(self.flags)
            flags = ", ".join(f"--{key}" for key in sorted(self.flags))
            lines.append(_wrap(f"a boolean option alone for true (--{example}): {flags}"))
        if self.lists:
            example = "lrs" if "lrs" in self.lists else min(self.lists)
            lists = ", ".join(f"--{key}" for key in sorted(self.lists))
            lines.append(_wrap(f"a list as separate numbers (--{example} 1e-3 3e-4): {lists}"))
        for old, new in self.renamed.items():
            implied = self.implied.get(old, "").replace("=", " ")
            unless = f" ({implied} unless given)" if implied else ""
            lines.append(f"  {old} for {new.replace('=', ' ')}{unless}")
        return "\n".join(lines)


def _wrap(text: str) -> str:
    """``text`` as an indented paragraph of the help."""
    return textwrap.fill(
        text, 88, initial_indent="  ", subsequent_indent="    ", break_on_hyphens=False
    )


def _type_hints(source: Callable[..., Any]) -> dict[str, Any]:
    """The resolved annotations of a function, or of a class's ``__init__`` and those of its
    bases (which its ``**kwargs`` reach)."""
    functions = [c.__init__ for c in source.__mro__[::-1]] if isinstance(source, type) else [source]
    hints: dict[str, Any] = {}
    for function in functions:
        try:
            hints.update(typing.get_type_hints(function))
        except (NameError, TypeError):  # an annotation only a type checker resolves
            continue
    return hints


def _is_boolean(hint: Any) -> bool:
    """``hint`` is ``bool``, or that or None."""
    return hint is bool or (_is_union(hint) and set(typing.get_args(hint)) == {bool, type(None)})


def _is_number_list(hint: Any) -> bool:
    """``hint`` is a sequence of numbers, or that or None."""
    for option in typing.get_args(hint) if _is_union(hint) else (hint,):
        origin = typing.get_origin(option)
        if isinstance(origin, type) and issubclass(origin, Sequence) and origin is not str:
            items = typing.get_args(option)
            if items and all(_is_number_type(item) for item in items if item is not Ellipsis):
                return True
    return False


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) is typing.Union or isinstance(hint, types.UnionType)


def _is_number_type(item: Any) -> bool:
    return isinstance(item, type) and issubclass(item, numbers.Real) and item is not bool


def _is_option(token: str) -> bool:
    """``token`` names an option (not a negative number)."""
    if not token.startswith("-"):
        return False
    try:
        float(token)
    except ValueError:
        return True
    return False
