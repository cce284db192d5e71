"""Sphinx configuration of the sptl documentation.

Build with ``make docs`` (``sphinx-build -W --keep-going -b html docs docs/_build/html``).

Two things are generated before every build, so they can never go stale:

- the autosummary lists in ``api.md``, from each public submodule's ``__all__``
  (see :func:`write_api_lists`); the generated block is rewritten only when ``__all__`` changed;
- ``docs/tutorials/*.ipynb``, copies of the notebooks in the repository's ``tutorials/`` folder
  (see :func:`copy_tutorials`); ``docs/tutorials/`` is gitignored.

The notebooks are stored without outputs (small diffs, nothing stale in git); the build executes them so
the pages show their tables and figures (about 4 minutes on 2 CPU cores), and fails on a cell error.
``tests/test_tutorials.py`` executes them too, so ``pytest`` alone keeps them working.
"""

from __future__ import annotations

import filecmp
import importlib
import inspect
import re
import shutil
import sys
import warnings
from datetime import date
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging

import sptl

logger = logging.getLogger(__name__)

# sphinx-autodoc-typehints 3.6 calls a Sphinx API deprecated for Sphinx 10 once per docstring; the
# Python warning (not a Sphinx warning) floods the log without telling the reader anything.
warnings.filterwarnings("ignore", message=r".*sphinx_autodoc_typehints.*set_application", category=DeprecationWarning)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# -- project -----------------------------------------------------------------------------------------
project = "sptl"
author = "sptl developers"
copyright = f"{date.today().year}, {author}"
release = sptl.__version__
version = ".".join(release.split(".")[:2])

# -- general -----------------------------------------------------------------------------------------
extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx_autodoc_typehints",  # after napoleon
]
templates_path = ["_templates"]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
default_role = "literal"

# -- myst / myst-nb ----------------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "force"  # run every notebook at build time: the pages show outputs
nb_execution_timeout = 600  # seconds per cell
nb_execution_raise_on_error = True
nb_execution_in_temp = True  # files a tutorial writes go to a temporary folder
nb_merge_streams = True

# -- autodoc / autosummary / napoleon ----------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "inherited-members": True, "show-inheritance": True}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
typehints_defaults = "comma"
typehints_use_signature = False
typehints_document_rtype = True
always_document_param_types = False

# -- html --------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"sptl {release}"
html_theme_options = {"sidebar_hide_name": False}

# -- generated sources -------------------------------------------------------------------------------
#: Public submodules in the order the API page shows them; any other name in ``sptl.__all__`` that is
#: a module is appended after these, so a new submodule is never left out.
API_ORDER = ["pp", "tl", "pl", "models", "metrics", "datasets"]
API_FILE = HERE / "api.md"
API_BEGIN = "<!-- begin generated API lists: written by docs/conf.py from each module's __all__; do not edit -->"
API_END = "<!-- end generated API lists -->"
TUTORIALS_SRC = ROOT / "tutorials"
TUTORIALS_DST = HERE / "tutorials"


def _public_modules() -> list[str]:
    names = [n for n in sptl.__all__ if inspect.ismodule(getattr(sptl, n, None))]
    return [n for n in API_ORDER if n in names] + sorted(n for n in names if n not in API_ORDER)


def _summary(module) -> str:
    doc = inspect.getdoc(module) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def api_lists() -> str:
    """The generated part of ``api.md``: one section per public submodule, listing its ``__all__``."""
    parts = [API_BEGIN, ""]
    for name in _public_modules():
        modname = f"sptl.{name}"
        module = importlib.import_module(modname)
        if not hasattr(module, "__all__"):
            msg = f"`{modname}` has no `__all__`: list its public names there so the API page can show them."
            raise RuntimeError(msg)
        parts += [f"## `{modname}`", "", _summary(module), ""]
        members = list(module.__all__)
        if not members:
            parts += ["No public functions yet.", ""]
            continue
        parts += [
            "```{eval-rst}",
            f".. currentmodule:: {modname}",
            "",
            ".. autosummary::",
            "   :toctree: generated",
            "   :nosignatures:",
            "",
            *(f"   {m}" for m in members),
            "```",
            "",
        ]
    parts.append(API_END)
    return "\n".join(parts)


def write_api_lists(app: Sphinx, config: Config) -> None:
    """Rewrite the generated block of ``api.md`` from ``__all__`` (only when it changed)."""
    text = API_FILE.read_text(encoding="utf-8")
    if API_BEGIN not in text or API_END not in text:
        msg = f"{API_FILE} lacks the markers of the generated block:\n{API_BEGIN}\n...\n{API_END}"
        raise RuntimeError(msg)
    head, rest = text.split(API_BEGIN, 1)
    _, tail = rest.split(API_END, 1)
    new = head + api_lists() + tail
    if new != text:
        API_FILE.write_text(new, encoding="utf-8")
        logger.info("api.md: autosummary lists updated from __all__")


def copy_tutorials(app: Sphinx, config: Config) -> None:
    """Mirror ``tutorials/*.ipynb`` into ``docs/tutorials/`` (copies only what changed)."""
    TUTORIALS_DST.mkdir(exist_ok=True)
    sources = {p.name: p for p in sorted(TUTORIALS_SRC.glob("*.ipynb"))}
    for stale in TUTORIALS_DST.glob("*.ipynb"):
        if stale.name not in sources:
            stale.unlink()
    for name, src in sources.items():
        dst = TUTORIALS_DST / name
        if not dst.exists() or not filecmp.cmp(src, dst, shallow=False):
            shutil.copy2(src, dst)


def data_docstring(app: Sphinx, what: str, name: str, obj, options, lines: list[str]) -> None:
    """Document a constant with its ``#:`` comment, also when it is defined in a private module.

    autodoc reads ``#:`` comments only in the module it documents (``sptl.datasets``), not in the
    ``_*.py`` module that defines a re-exported constant, and falls back to the docstring of the
    value's type (``tuple``, ``dict``). Runs after napoleon, which would read "Sections: ..." as an
    inline type, so the comment is used as written.
    """
    if what != "data":
        return
    modname, _, attr = name.rpartition(".")
    candidates = [modname, *sorted(m for m in sys.modules if m.startswith(f"{modname}._"))]
    for defining in candidates:
        if defining not in sys.modules or getattr(sys.modules[defining], attr, None) is not obj:
            continue
        comment = ModuleAnalyzer.for_module(defining).find_attr_docs().get(("", attr))
        if comment:
            lines[:] = list(comment)
            return
    if getattr(obj, "__doc__", None) == type(obj).__doc__:  # a plain value: no doc of its own
        lines[:] = []


#: A numpy "Returns" entry that is a type (``AnnData``, ``name : dict[str, int]``), not prose.
_TYPE_LINE = re.compile(r"(\w+\s*:\s*)?[\w.~`:]+(\[[^\]]*\])?(\s*\|\s*[\w.~`:]+(\[[^\]]*\])?)*")
_UNDERLINE = re.compile(r"\s*-{3,}\s*")


def prose_returns(app: Sphinx, what: str, name: str, obj, options, lines: list[str]) -> None:
    """Render a "Returns" section written as prose as a ``:returns:`` field, not as a list of types.

    sptl's docstrings keep types in the signature and describe the result in words (naming every key
    written), as scanpy's do; napoleon would read each unindented line of such a section as a return
    type. A section in numpy form (a type line followed by an indented description) is left alone.
    """
    for i in range(len(lines) - 1):
        if lines[i].strip() == "Returns" and _UNDERLINE.fullmatch(lines[i + 1]):
            break
    else:
        return
    end = next(
        (j for j in range(i + 2, len(lines) - 1) if lines[j].strip() and _UNDERLINE.fullmatch(lines[j + 1])),
        len(lines),
    )
    block = lines[i + 2 : end]
    filled = [k for k, line in enumerate(block) if line.strip()]
    if not filled:
        return
    first = block[filled[0]]
    indent = len(first) - len(first.lstrip())
    nxt = block[filled[1]] if len(filled) > 1 else None
    typed = _TYPE_LINE.fullmatch(first.strip()) and (nxt is None or len(nxt) - len(nxt.lstrip()) > indent)
    if typed:
        return
    body = [f"    {line[indent:]}" if line.strip() else "" for line in block]
    lines[i:end] = ["", ":returns:", *body, ""]


def skip_foreign_members(app: Sphinx, what: str, name: str, obj: object, skip: bool, options: object) -> bool | None:
    """Leave out members a class inherits from scikit-learn (documented there; their cross-references fail here)."""
    module = getattr(obj, "__module__", None) or getattr(type(obj), "__module__", "")
    if isinstance(module, str) and module.startswith("sklearn"):
        return True
    return None


def setup(app: Sphinx) -> None:
    """Generate ``api.md``'s lists and the tutorial copies before autosummary and the reader run."""
    app.connect("config-inited", write_api_lists)
    app.connect("config-inited", copy_tutorials)
    app.connect("autodoc-skip-member", skip_foreign_members)
    app.connect("autodoc-process-docstring", prose_returns, priority=400)  # before napoleon
    app.connect("autodoc-process-docstring", data_docstring, priority=600)  # after napoleon
