"""Load the C templates that sit beside this module (``templates/``).

Whole-file templates use ``string.Template`` placeholders (``$name``,
``${NAME}``); Python computes every value, the template only places them.
Kernel files are split into sections so a generated file carries only the
kernels it calls (an unused ``static`` function would fail ``-Werror``); a
family of kernels may span several files (one per operator), read in order::

    /*@ section conv_dense */
    static void vst_conv_dense(...) { ... }
    /*@ section relu */
    ...

>>> render("model_data.h.in", banner="/* x */", name="m", NAME="M", length=3)  # doctest: +SKIP
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from string import Template

TEMPLATES = Path(__file__).with_name("templates")
_SECTION = re.compile(r"^/\*@ section (\w+) \*/\n", re.MULTILINE)


@cache
def _text(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def render(template: str, **values) -> str:
    """Fill the whole-file ``template``; a missing value raises KeyError."""
    return Template(_text(template)).substitute(values)


@cache
def sections(names: str | tuple[str, ...]) -> dict[str, str]:
    """The named sections of one kernel template file or of several, in file order."""
    out: dict[str, str] = {}
    for name in (names,) if isinstance(names, str) else names:
        parts = _SECTION.split(_text(name))
        for i in range(1, len(parts), 2):
            if parts[i] in out:
                raise ValueError(f"kernel section {parts[i]!r} is defined twice ({name})")
            out[parts[i]] = parts[i + 1].strip() + "\n"
    return out


def kernels(names: str | tuple[str, ...], wanted: list[tuple[str, dict]]) -> str:
    """The sections in ``wanted`` (each ``(section, substitutions)``), deduplicated,
    in the order of the files so helpers come before their callers."""
    available = sections(names)
    chosen = {(s, tuple(sorted(v.items()))) for s, v in wanted}
    order = list(available)
    out = []
    for section, subs in sorted(chosen, key=lambda item: (order.index(item[0]), item[1])):
        out.append(Template(available[section]).substitute(dict(subs)))
    return "\n".join(out)
