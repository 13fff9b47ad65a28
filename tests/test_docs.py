"""The documentation site (mkdocs.yml, docs/) covers the public API, the notebooks and the
benchmark results.

Pure file parsing: nothing is imported from jaxsecond and mkdocs is not run, so these checks
take milliseconds; `mkdocs build --strict` checks the rendering itself.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PACKAGE = ROOT / "jaxsecond"
KERNELS = ROOT / "kernels"  # shipped as jaxsecond.kernels
RESULTS_INCLUDE = re.compile(r"""^--8<--\s+["']benchmarks/RESULTS\.md["']\s*$""", re.MULTILINE)


def _module_tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _literal(tree: ast.Module, name: str):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == name:
            return ast.literal_eval(node.value)
    return None


def _public_names(path: Path) -> set[str]:
    """``__all__`` where the module defines it, else the names it re-exports with
    ``from ... import name as name`` and the public names it defines itself."""
    tree = _module_tree(path)
    explicit = _literal(tree, "__all__")
    if explicit is not None:
        return set(explicit)
    names = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            names.update(a.name for a in node.names if a.asname == a.name)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return {n for n in names if not n.startswith("_")}


def _top_level_exports() -> dict[str, str]:
    """Top-level name -> the subpackage that defines it (jaxsecond/__init__.py is lazy)."""
    exports = _literal(_module_tree(PACKAGE / "__init__.py"), "_EXPORTS_BY_SUBPACKAGE")
    assert exports, "jaxsecond/__init__.py: _EXPORTS_BY_SUBPACKAGE not found"
    return {name: sub for sub, names in exports.items() for name in names}


def _subpackages() -> list[str]:
    subpackages = _literal(_module_tree(PACKAGE / "__init__.py"), "_SUBPACKAGES")
    assert subpackages, "jaxsecond/__init__.py: _SUBPACKAGES not found"
    return list(subpackages)


def _kernel_modules() -> list[Path]:
    return sorted(p for p in KERNELS.glob("*.py") if p.name != "__init__.py")


def _directives() -> set[str]:
    """Targets of the mkdocstrings directives (``::: jaxsecond.name``) in docs/."""
    found = set()
    for page in DOCS.rglob("*.md"):
        found.update(re.findall(r"^:::\s+([\w.]+)\s*$", page.read_text(encoding="utf-8"), re.M))
    return found


def _nav() -> list[str]:
    """The page paths listed under ``nav:`` in mkdocs.yml, in order."""
    lines = (ROOT / "mkdocs.yml").read_text(encoding="utf-8").splitlines()
    start = lines.index("nav:")
    pages = []
    for line in lines[start + 1 :]:
        if line and not line[0].isspace() and not line.startswith("#"):
            break  # the next top-level key
        match = re.match(r"^\s*-\s*(?:[^:#]+:\s*)?([\w./-]+\.(?:md|ipynb))\s*$", line)
        if match:
            pages.append(match.group(1))
    assert pages, "mkdocs.yml: no pages under nav:"
    return pages


def test_top_level_exports_are_documented():
    documented = _directives()
    missing = [
        name
        for name, sub in sorted(_top_level_exports().items())
        if f"jaxsecond.{name}" not in documented and f"jaxsecond.{sub}.{name}" not in documented
    ]
    assert not missing, f"no '::: jaxsecond.NAME' entry in docs/ for {missing}"


def test_subpackage_names_are_documented():
    documented = _directives()
    top = _top_level_exports()
    missing = []
    for sub in _subpackages():
        for name in sorted(_public_names(PACKAGE / sub / "__init__.py")):
            also_top = top.get(name) == sub and f"jaxsecond.{name}" in documented
            if f"jaxsecond.{sub}.{name}" not in documented and not also_top:
                missing.append(f"jaxsecond.{sub}.{name}")
    for module in _kernel_modules():
        for name in sorted(_public_names(module)):
            if f"jaxsecond.kernels.{module.stem}.{name}" not in documented:
                missing.append(f"jaxsecond.kernels.{module.stem}.{name}")
    assert not missing, f"no '::: ...' entry in docs/ for {missing}"


def test_directives_name_public_objects():
    # A renamed or removed name leaves a directive behind; catch it before the build does.
    top = _top_level_exports()
    known = {f"jaxsecond.{name}" for name in top}
    for sub in _subpackages():
        known.add(f"jaxsecond.{sub}")
        known.update(f"jaxsecond.{sub}.{n}" for n in _public_names(PACKAGE / sub / "__init__.py"))
    for module in _kernel_modules():
        known.add(f"jaxsecond.kernels.{module.stem}")
        known.update(f"jaxsecond.kernels.{module.stem}.{n}" for n in _public_names(module))
    unknown = sorted(_directives() - known)
    assert not unknown, f"directives in docs/ for names that are not public: {unknown}"


def test_nav_pages_exist_and_every_page_is_listed():
    nav = _nav()
    missing = [
        p
        for p in nav
        if not (DOCS / p).is_file() and not (p.startswith("notebooks/") and (ROOT / p).is_file())
    ]
    assert not missing, f"mkdocs.yml nav lists pages that do not exist: {missing}"
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    unlisted = sorted(pages - set(nav))
    assert not unlisted, f"pages in docs/ missing from the nav: {unlisted}"
    assert "multi_device.md" in nav


def test_every_notebook_is_in_the_nav():
    nav = _nav()
    notebooks = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    missing = [n for n in notebooks if f"notebooks/{n}" not in nav]
    assert not missing, f"notebooks missing from the mkdocs.yml nav: {missing}"


def test_benchmark_results_are_included_not_copied():
    including = [
        p
        for p in _nav()
        if p.endswith(".md") and RESULTS_INCLUDE.search((DOCS / p).read_text(encoding="utf-8"))
    ]
    assert including, "no page in the nav includes benchmarks/RESULTS.md (--8<-- snippet)"
    # A pasted copy would go stale: the results' own title appears only in RESULTS.md.
    title = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8").splitlines()[0]
    copies = [p.name for p in DOCS.rglob("*.md") if title in p.read_text(encoding="utf-8")]
    assert not copies, f"benchmarks/RESULTS.md is copied into {copies}; include it instead"
