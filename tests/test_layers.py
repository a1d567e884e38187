"""The package's shape, read from its code: layers that import only downward, no import cycles, and nothing of
Lightning's, torch's or Hydra's that is private (docs/architecture.md draws the layers)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

# lowest first; a module may import from its own layer and those below. Patterns: a module, or `pkg.*`.
LAYERS = [
    ("base", ["aer", "aer.errors", "aer.files", "aer.paths", "aer.schema", "aer.data", "aer.data.records",
              "aer.data.proto", "aer.data.release"]),
    ("settings", ["aer.settings"]),
    ("data and networks", ["aer.data.*", "aer.models", "aer.models.*", "aer.init", "aer.augment", "aer.metrics",
                           "aer.loggers", "aer.timing", "aer.launch"]),
    ("module", ["aer.module", "aer.callbacks", "aer.inference"]),
    ("checkpoints and runs", ["aer.checkpoint", "aer.runs", "aer.scoring", "aer.distill"]),
    ("commands", ["aer.train", "aer.evaluate", "aer.ensemble", "aer.predict", "aer.export", "aer.thresholds",
                  "aer.search", "aer.sweep", "aer.data.__main__", "hydra_plugins.*"]),
    ("analysis", ["aer.report", "aer.report.*", "aer.compare"]),
    ("entry", ["aer.config", "aer.cli", "aer.report.__main__"]),
]
# the one patch Lightning has no hook for (documented, restored, tested: tests/test_settings.py)
PRIVATE_ALLOWED = {"aer/launch.py"}
STDLIB_PRIVATE = {"os._exit"}


def _modules() -> dict[str, Path]:
    files = [*(ROOT / "aer").rglob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")]
    out = {}
    for f in files:
        if "conf" in f.relative_to(ROOT).parts:
            continue
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _layer(module: str) -> int:
    """The layer that names `module`, else the one whose `pkg.*` holds it (aer.data.records is named in base,
    the rest of aer.data is in `aer.data.*`)."""
    named = [i for i, (_, patterns) in enumerate(LAYERS) if module in patterns]
    held = [i for i, (_, patterns) in enumerate(LAYERS) for p in patterns
            if p.endswith(".*") and module.startswith(p[:-1])]
    assert named or held, f"{module}: in no layer of tests/test_layers.py; give it one (and docs/architecture.md)"
    return (named or held)[0]


def _imports(path: Path, known: set[str]) -> set[str]:
    """The aer modules `path` imports, anywhere in it but an `if __name__ == "__main__":` block (an entry)."""
    tree = ast.parse(path.read_text())
    main = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and "__name__" in ast.unparse(block.test)
            for n in ast.walk(block)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in main:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return {m for m in out if m in known}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(f, set(modules)) - {m} for m, f in modules.items()}


def test_no_module_imports_from_a_layer_above_its_own():
    upward = [f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
              for m, deps in _graph().items() for d in deps if _layer(d) > _layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(" -> ".join([*path[path.index(d):], d]))
            elif d not in state:
                visit(d, [*path, d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def _own_names(cls: ast.ClassDef) -> set[str]:
    """What a class defines itself: its methods, class attributes, nested classes and `self.x = ...`."""
    names = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    for n in ast.walk(cls):
        if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) and ast.unparse(n.value) == "self":
            names.add(n.attr)
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
            names.add(n.target.id)
        elif isinstance(n, ast.Assign):
            names |= {t.id for t in n.targets if isinstance(t, ast.Name)}
    return names


def private_uses(path: Path) -> list[str]:
    """`obj._name` of another object, `self._name` a class inherits rather than defines, and `_name`s
    imported from outside aer (dunders are public)."""
    tree = ast.parse(path.read_text())
    private = lambda name: name.startswith("_") and not (name.startswith("__") and name.endswith("__"))  # noqa: E731
    found = []
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        own = _own_names(cls)
        found += [f"{path.name}:{n.lineno}: self.{n.attr}" for n in ast.walk(cls) if isinstance(n, ast.Attribute)
                  and ast.unparse(n.value) in ("self", "cls") and private(n.attr) and n.attr not in own]
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and private(n.attr) and ast.unparse(n.value) not in ("self", "cls"):
            if f"{ast.unparse(n.value)}.{n.attr}" not in STDLIB_PRIVATE:
                found.append(f"{path.name}:{n.lineno}: {ast.unparse(n)}")
        elif isinstance(n, ast.ImportFrom) and n.module and not n.module.startswith("aer"):
            found += [f"{path.name}:{n.lineno}: from {n.module} import {a.name}" for a in n.names if private(a.name)]
            if any(private(p) for p in n.module.split(".")):
                found.append(f"{path.name}:{n.lineno}: from {n.module}")
    return found


def test_nothing_private_of_lightning_torch_or_hydra_outside_the_ddp_glue():
    found = [use for m, f in _modules().items() if str(f.relative_to(ROOT)) not in PRIVATE_ALLOWED
             for use in private_uses(f)]
    assert not found, "\n".join(found)


def test_the_check_finds_private_uses(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from torch._C import x\nclass A(B):\n    def f(self):\n        self._own = 1\n"
                      "        return self._own, self._trainer, loop._skip, os._exit\n")
    assert private_uses(sample) == ["sample.py:5: self._trainer", "sample.py:1: from torch._C",
                                    "sample.py:5: loop._skip"]


def test_the_ddp_glue_is_the_one_exception():
    assert private_uses(ROOT / "aer" / "launch.py"), "launch.py holds the documented patch"
