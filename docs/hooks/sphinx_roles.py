"""mkdocs hook: the docstrings' Sphinx roles (``:class:`X```) render as plain code (``X``).

The source keeps the roles that editors and Sphinx understand; without this hook the rendered
reference would show the role's name in front of each name.
"""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|exc|data|obj):<code>(~[\w.]*\.)?")


def on_page_content(html: str, **_: Any) -> str:
    """Drop each role in front of its code span (and, after ``~``, the name's dotted path)."""
    return ROLE.sub("<code>", html)
