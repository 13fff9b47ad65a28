"""Griffe extensions used by the documentation build (see mkdocs.yml).

``KernelsSubpackage`` documents ``jaxsecond.kernels``: the wheel ships the repository's
``kernels/`` folder under that name (a setuptools ``package-dir`` mapping), so the source
tree has no ``jaxsecond/kernels`` folder for Griffe to find.

``ConstructorSignatures`` gives classes whose ``__init__`` only exists at run time
(equinox Modules and NamedTuples generate it from their fields) the signature Python
reports for them, so that their reference entries show how to construct them.

``DocstringConventions`` reads two conventions of the project's docstrings the way
Sphinx's napoleon does: an ``Example:`` heading starts an examples section (Griffe
only knows ``Examples:``), and Sphinx roles such as ``:func:`odeint``` are shown as
inline code.
"""

import importlib
import inspect
import re
import typing
from pathlib import Path

import griffe

_KERNELS = Path(__file__).resolve().parents[2] / "kernels"
_EXAMPLE_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
_SPHINX_ROLE = re.compile(r":(?:func|class|meth|mod|attr|obj|data|exc):`~?([^`]+)`")


class KernelsSubpackage(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        if pkg.path != "jaxsecond" or "kernels" in pkg.members:
            return
        kernels = _visit(loader, "kernels", _KERNELS / "__init__.py", pkg)
        for path in sorted(_KERNELS.glob("*.py")):
            if path.stem != "__init__":
                _visit(loader, path.stem, path, kernels)


def _visit(loader: griffe.GriffeLoader, name: str, path: Path, parent: griffe.Module):
    code = path.read_text(encoding="utf-8")
    loader.lines_collection[path] = code.splitlines()
    module = griffe.visit(
        name,
        path,
        code,
        extensions=loader.extensions,
        parent=parent,
        docstring_parser=loader.docstring_parser,
        docstring_options=loader.docstring_options,
        lines_collection=loader.lines_collection,
        modules_collection=loader.modules_collection,
    )
    parent.set_member(name, module)
    return module


class DocstringConventions(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            text = _EXAMPLE_HEADING.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = _SPHINX_ROLE.sub(r"`\1`", text)


class ConstructorSignatures(griffe.Extension):
    def on_class_members(self, *, cls: griffe.Class, **kwargs) -> None:
        if "__init__" in cls.members or not cls.path.startswith("jaxsecond."):
            return
        try:
            runtime = importlib.import_module(cls.module.path)
            for part in cls.path[len(cls.module.path) + 1 :].split("."):
                runtime = getattr(runtime, part)
            signature = inspect.signature(runtime)
        except (ImportError, AttributeError, TypeError, ValueError):
            return  # nothing to add: the entry keeps the class without a signature
        parameters = [griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)]
        for p in signature.parameters.values():
            parameters.append(
                griffe.Parameter(
                    p.name,
                    annotation=_annotation(p.annotation),
                    kind=griffe.ParameterKind(p.kind.description),
                    default=None if p.default is p.empty else _default(p.default),
                )
            )
        init = griffe.Function(
            "__init__",
            lineno=cls.lineno,
            endlineno=cls.lineno,
            parent=cls,
            parameters=griffe.Parameters(*parameters),
            returns="None",
        )
        cls.set_member("__init__", init)


def _annotation(annotation):
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, typing.ForwardRef):
        return annotation.__forward_arg__
    if isinstance(annotation, str):
        return annotation
    return inspect.formatannotation(annotation)


def _default(value) -> str:
    if inspect.isclass(value) or inspect.isfunction(value):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)
