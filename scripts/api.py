#!/usr/bin/env python3
"""The API page of the HTML build: every public name of llmtrain, one line each, grouped by
wing, with the notebook sections that show or use it.

    python scripts/api.py [OUT]      # default build/html/api.html (make run writes it too)

Read from the source, not imported (no torch needed, a second or two): a module's public names
are its ``__all__`` where it has one, else the functions, classes and constants it defines whose
names do not start with ``_``; a name's line is the first line of its docstring (a constant's:
the docstring under it, else the comment on its line). A notebook section is the nearest
``## ...`` heading above a code cell of ``notebooks/NN_*.py`` that names the function (through
the notebook's imports, old import paths included); "shown" when the cell passes it to
``show(...)``. tests/test_api.py checks the page against the imported package.
"""

from __future__ import annotations

import ast
import html
import io
import re
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib"
PKG = LIB / "llmtrain"
NOTEBOOKS = ROOT / "notebooks"

# The wings, in the order of the layers (lowest first), and the top-level modules of each.
WINGS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("base", "argument checks, showing source, the sources' registry, units",
     ("llmtrain", "llmtrain.check", "llmtrain.show", "llmtrain.sources", "llmtrain.units")),
    ("model", "the model registry, the reference LLaMA, recomputation", ("llmtrain.model",)),
    ("cost", "arithmetic a reader can redo: closed forms, schedules as data, the planner "
             "(imports no torch)", ("llmtrain.cost",)),
    ("measure", "what is measured: saved tensors, optimizer state bytes", ("llmtrain.measure",)),
    ("optim", "memory-saving optimizers written from scratch", ("llmtrain.optim",)),
    ("precision", "number formats, FP8, loss scaling and mixed precision", ("llmtrain.precision",)),
    ("recipes", "the slides' settings, schedules, batch sizes, a tiny training loop",
     ("llmtrain.recipes",)),
    ("parallel", "real ranks on torch.distributed: launch, counted collectives, DP, ZeRO, TP, PP, "
                 "3D", ("llmtrain.parallel",)),
    ("top", "what the reader touches: widgets, figures, the command line, the chapter map",
     ("llmtrain.widgets", "llmtrain.plots", "llmtrain.cli", "llmtrain.chapter",
      "llmtrain.device", "llmtrain.gpu_results")),
)


@dataclass
class Entry:
    module: str
    name: str
    kind: str            # "function", "class", "constant"
    summary: str
    line: int
    home: str = ""       # for a re-export: the module that defines and lists it
    origin: tuple = ()   # (module, name) where it is defined, if not here
    uses: list = field(default_factory=list)  # [(stem, section, shown)]


# --- the package, read from its source ---------------------------------------------------

def module_name(path: Path) -> str:
    parts = list(path.relative_to(LIB).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(pkg: Path = PKG) -> dict[str, Path]:
    """The public modules: none of whose dotted parts starts with an underscore."""
    out = {}
    for p in sorted(pkg.rglob("*.py")):
        name = module_name(p)
        if not any(part.startswith("_") for part in name.split(".")):
            out[name] = p
    return out


def _comments(text: str) -> dict[int, str]:
    out = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                out[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, SyntaxError):
        pass
    return out


def _first_line(doc: str | None) -> str:
    doc = (doc or "").strip()
    if not doc:
        return ""
    para = doc.split("\n\n")[0]
    return " ".join(ln.strip() for ln in para.splitlines())


def _targets(node: ast.AST) -> list[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    out = []
    for t in targets:
        out += [e.id for e in (t.elts if isinstance(t, ast.Tuple) else [t]) if isinstance(e, ast.Name)]
    return out


def _top_statements(body: list[ast.stmt]):
    """Top-level statements, those inside top-level if/try blocks included."""
    for node in body:
        if isinstance(node, ast.If):
            yield from _top_statements(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            yield from _top_statements(node.body + node.orelse + node.finalbody
                                       + [s for h in node.handlers for s in h.body])
        else:
            yield node


@dataclass
class ModuleInfo:
    name: str
    path: Path
    doc: str
    defined: dict[str, Entry]            # defined here (public or not)
    imported: dict[str, tuple[str, str | None]]  # local -> (module, name) or (module, None)
    all: list[str] | None
    stars: list[str]


def read_module(name: str, path: Path) -> ModuleInfo:
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    comments = _comments(text)
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    defined, imported, stars, listed = {}, {}, [], None
    body = list(_top_statements(tree.body))
    for i, node in enumerate(body):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            defined[node.name] = Entry(name, node.name, kind, _first_line(ast.get_docstring(node)),
                                       node.lineno)
        elif (isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name)
              and node.target.id == "__all__" and listed is not None):
            try:
                listed += list(ast.literal_eval(node.value))
            except ValueError:
                pass
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            names = _targets(node)
            if names == ["__all__"]:
                try:
                    listed = list(ast.literal_eval(node.value))
                except ValueError:
                    listed = None
                continue
            nxt = body[i + 1] if i + 1 < len(body) else None
            doc = (nxt.value.value if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                   and isinstance(nxt.value.value, str) else "")
            summary = _first_line(doc) or comments.get(node.lineno, "") or comments.get(
                getattr(node, "end_lineno", node.lineno), "")
            for n in names:
                defined.setdefault(n, Entry(name, n, "constant", summary, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                if a.name == "*":
                    stars.append(base)
                else:
                    imported[a.asname or a.name] = (base, a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    imported[a.asname] = (a.name, None)
    return ModuleInfo(name, path, _first_line(ast.get_docstring(tree)), defined, imported, listed, stars)


class Package:
    """Every public module of llmtrain, read from its source, and where each name lives."""

    def __init__(self, pkg: Path = PKG):
        self.paths = {module_name(p): p for p in sorted(pkg.rglob("*.py"))}
        self.info = {m: read_module(m, p) for m, p in self.paths.items()}
        self.public = modules(pkg)
        self.old = self._old_names()

    def _old_names(self) -> dict[str, tuple[str, ...]]:
        path = self.paths.get("llmtrain._renamed")
        if path is None:
            return {}
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign | ast.AnnAssign) and "OLD_NAMES" in _targets(node):
                return ast.literal_eval(node.value)
        return {}

    def home(self, module: str, name: str, depth: int = 0) -> tuple[str, str] | None:
        """(module, name) where ``module.name`` is defined, following imports, ``import *``,
        old import paths and a package's lazy re-exports (a name of one of its submodules)."""
        if depth > 8:
            return None
        if module in self.old:
            for new in self.old[module]:
                found = self.home(new, name, depth + 1)
                if found:
                    return found
            return None
        if f"{module}.{name}" in self.info:
            return None  # a submodule, not a name
        info = self.info.get(module)
        if info is None:
            return None
        if name in info.defined:
            return module, name
        if name in info.imported:
            src, attr = info.imported[name]
            if attr is None or not src.startswith("llmtrain"):
                return None
            if f"{src}.{attr}" in self.info:
                return None
            return self.home(src, attr, depth + 1)
        for star in info.stars:
            found = self.home(star, name, depth + 1)
            if found:
                return found
        if info.path.name == "__init__.py":  # PEP 562 re-exports: the first submodule defining it
            for sub in sorted(m for m in self.info if m.rsplit(".", 1)[0] == module):
                if name in self.info[sub].defined:
                    return sub, name
        return None

    def names(self, module: str) -> list[str]:
        info = self.info[module]
        if info.all is not None:
            return list(info.all)
        return [n for n in info.defined if not n.startswith("_")]

    def entries(self) -> dict[str, list[Entry]]:
        """module -> its public names, in source order (``__all__``'s order where it has one);
        a name defined elsewhere is an Entry with ``home`` set."""
        out = {}
        for m in self.public:
            rows = []
            for n in self.names(m):
                where = self.home(m, n)
                if where and where[0] == m:
                    rows.append(self.info[m].defined[n])
                elif where:  # a re-export: linked to its home if the home lists it
                    home = self.info[where[0]].defined[where[1]]
                    listed = where[1] in self.names(where[0]) and where[0] in self.public
                    rows.append(Entry(m, n, home.kind, home.summary, home.line,
                                      home=where[0] if listed else "", origin=where))
                elif f"{m}.{n}" in self.info:
                    rows.append(Entry(m, n, "module", self.info[f"{m}.{n}"].doc, 0, home=f"{m}.{n}"))
                else:
                    rows.append(Entry(m, n, "constant", "", 0))
            if rows or self.info[m].doc:
                out[m] = rows
        return out


# --- the notebooks -----------------------------------------------------------------------

HEADING = re.compile(r"^# (#{1,2}) (.+?)\s*$")


def cells(text: str):
    """(kind, first line number, lines) of each cell of a jupytext percent file."""
    kind, start, lines = "code", 1, []
    for i, line in enumerate(text.splitlines(), 1):
        if line.startswith("# %%"):
            if lines:
                yield kind, start, lines
            kind = "markdown" if "[markdown]" in line else "code"
            start, lines = i + 1, []
        else:
            lines.append(line)
    if lines:
        yield kind, start, lines


def anchor(heading: str) -> str:
    """The id nbconvert gives a heading: its text (markdown removed), spaces as '-', URL-quoted
    as ``nbconvert.filters.strings._convert_header_id`` does."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[`*]|(?<!\w)_|_(?!\w)", "", text).strip()
    return quote(text.replace(" ", "-"), safe="?/:@!$&'()*+,;=")


def _parse_code(lines: list[str]) -> ast.Module | None:
    code = "\n".join(("# " + ln) if ln.lstrip().startswith(("%", "!")) else ln for ln in lines)
    try:
        return ast.parse(code)
    except SyntaxError:
        return None


def _dotted(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def notebook_uses(package: Package, notebooks: Path = NOTEBOOKS) -> dict[tuple[str, str], list]:
    """(home module, name) -> [(notebook stem, section heading, shown)], in notebook order."""
    uses: dict[tuple[str, str], dict] = {}
    known = set(package.info) | set(package.old)
    for path in sorted(notebooks.glob("[0-9][0-9]_*.py")):
        text = path.read_text(encoding="utf-8")
        parsed = [(kind, lines, _parse_code(lines) if kind == "code" else None)
                  for kind, _, lines in cells(text)]
        bound: dict[str, str] = {}  # local name -> dotted path (a module, or module.name)
        for kind, _, tree in parsed:
            for node in ast.walk(tree) if tree else ():
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llmtrain"):
                    for a in node.names:
                        bound[a.asname or a.name] = f"{node.module}.{a.name}"
                elif isinstance(node, ast.Import):
                    for a in node.names:
                        if a.name.startswith("llmtrain"):
                            bound[a.asname or a.name.split(".")[0]] = (
                                a.name if a.asname else a.name.split(".")[0])
        section = ""
        for kind, lines, tree in parsed:
            if kind == "markdown":
                for line in lines:
                    m = HEADING.match(line)
                    if m and (len(m[1]) == 2 or not section):
                        section = m[2]
                continue
            if tree is None:
                continue
            shown = {id(n) for call in ast.walk(tree) if isinstance(call, ast.Call)
                     and isinstance(call.func, ast.Name) and call.func.id == "show"
                     for arg in call.args for n in ast.walk(arg)}
            for node in ast.walk(tree):
                if not isinstance(node, ast.Attribute | ast.Name) or (
                        isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load)):
                    continue
                parts = _dotted(node)
                if not parts or parts[0] not in bound:
                    continue
                full = (bound[parts[0]] + "." + ".".join(parts[1:])).rstrip(".").split(".")
                for k in range(len(full) - 1, 0, -1):  # the longest prefix that is a module
                    if ".".join(full[:k]) in known:
                        where = package.home(".".join(full[:k]), full[k])
                        if where:
                            rows = uses.setdefault(where, {})
                            key = (path.stem, section)
                            rows[key] = rows.get(key, False) or id(node) in shown
                        break
    return {where: [(stem, sec, shown) for (stem, sec), shown in rows.items()]
            for where, rows in uses.items()}


# --- the page ----------------------------------------------------------------------------

def collect(pkg: Path = PKG, notebooks: Path = NOTEBOOKS) -> dict[str, list[Entry]]:
    """The page's content: module -> entries, each with its notebook uses."""
    package = Package(pkg)
    uses = notebook_uses(package, notebooks)
    out = package.entries()
    for rows in out.values():
        for e in rows:
            # a re-export links to its home, which lists the uses
            e.uses = [] if e.home else uses.get(e.origin or (e.module, e.name), [])
    return out


def wing_of(module: str) -> str:
    best, length = "top", -1
    for wing, _, prefixes in WINGS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > length:
                best, length = wing, len(p)
    return best


MAX_LINKS = 8  # a name used everywhere (GIB) lists its first sections and a count


def _uses_html(uses: list) -> str:
    links = []
    for stem, section, shown in uses[:MAX_LINKS]:
        label = f"{stem[:2]} § {section}" if section else stem[:2]
        links.append(f'<a href="{html.escape(stem)}.html#{html.escape(anchor(section))}">'
                     f"{html.escape(label)}</a>{' (shown)' if shown else ''}")
    more = f"; and {len(uses) - MAX_LINKS} more" if len(uses) > MAX_LINKS else ""
    return "; ".join(links) + more


def page(content: dict[str, list[Entry]], package_doc: dict[str, str] | None = None) -> str:
    package_doc = package_doc or {}
    body = []
    n_names = sum(len(rows) for rows in content.values())
    toc = " · ".join(f'<a href="#wing-{w}">{w}</a>' for w, _, _ in WINGS)
    for wing, what, _ in WINGS:
        mods = [m for m in content if wing_of(m) == wing]
        if not mods:
            continue
        body.append(f'<h2 id="wing-{wing}">{wing}: {html.escape(what)}</h2>')
        for m in mods:
            doc = package_doc.get(m, "")
            body.append(f'<h3 id="{html.escape(m)}"><code>{html.escape(m)}</code></h3>'
                        + (f"<p>{html.escape(doc)}</p>" if doc else ""))
            items = []
            for e in content[m]:
                target = f"{e.home}.{e.origin[1] if e.origin else e.name}"
                where = (f' <small>(from <a href="#{html.escape(target)}">'
                         f"<code>{html.escape(target)}</code></a>)</small>"
                         if e.home and e.kind != "module" else "")
                used = _uses_html(e.uses)
                items.append(
                    f'<li id="{html.escape(m)}.{html.escape(e.name)}"><code>{html.escape(e.name)}'
                    f"</code> <small>{e.kind}</small>{where}"
                    + (f" — {html.escape(e.summary)}" if e.summary else "")
                    + (f'<br><span class="nb">notebooks: {used}</span>' if used else "")
                    + "</li>")
            body.append("<ul>" + "\n".join(items) + "</ul>" if items else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>llmtrain API</title>
<style>body{{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
max-width:60em;margin:2em auto;line-height:1.4}}li{{margin:.25em 0}}.nb{{font-size:85%;color:#555}}
code{{background:#f4f4f4;padding:0 .2em}}</style></head>
<body><h1>llmtrain API · 接口一览</h1>
<p>Every public name of the package ({n_names} in {len(content)} modules), one line each, grouped by
wing (lowest layer first: a module imports only its own layer or lower ones), with the notebook
sections that use it ("shown": the cell prints its source with <code>llmtrain.show</code>).
Generated from the source by <code>scripts/api.py</code>; <code>tests/test_api.py</code> checks it
covers every public name. <a href="index.html">Notebooks</a></p>
<p>{toc}</p>
{chr(10).join(body)}
</body></html>
"""


def write(out: Path, pkg: Path = PKG, notebooks: Path = NOTEBOOKS) -> Path:
    """Write the API page to ``out``; returns it."""
    package = Package(pkg)
    content = collect(pkg, notebooks)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page(content, {m: i.doc for m, i in package.info.items()}), encoding="utf-8")
    return out


def main(argv: list[str]) -> int:
    """``python scripts/api.py [OUT]``: write the page (default build/html/api.html)."""
    import argparse

    p = argparse.ArgumentParser(prog="python scripts/api.py", description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", type=Path, default=ROOT / "build" / "html" / "api.html",
                   help="where to write the page (default build/html/api.html)")
    args = p.parse_args(argv)
    if args.out.suffix != ".html":
        p.error(f"out must be a path ending in .html, got {str(args.out)!r}")
    print(write(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
