"""A griffe extension for the docs site: Keras-style docstrings.

bn-keras writes its docstrings in Keras's order, ending with an unindented
`Example:` of doctests, which griffe's Google-style parser would render as
prose. This extension turns such an example into a code block of the
docstring before it is parsed. mkdocs.yml loads it.
"""

import re

import griffe

_EXAMPLE = re.compile(r"^Example:[ \t]*\n(?=\s*>>>)", re.MULTILINE)


def fence_example(docstring):
    """`docstring` with its final `Example:` section in a `pycon` fence,
    under a bold `Example:` (as docs/api pages show it)."""
    match = _EXAMPLE.search(docstring)
    if match is None:
        return docstring
    example = docstring[match.end() :].strip("\n")
    return (
        f"{docstring[: match.start()]}**Example:**\n\n"
        f"```pycon\n{example}\n```"
    )


class KerasDocstrings(griffe.Extension):
    """Fences the doctests of every object's `Example:` section."""

    def on_object(self, *, obj, loader, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = fence_example(obj.docstring.value)
