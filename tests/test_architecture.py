"""The package's shape: no import cycles between wsl's modules (function-local imports included),
and configuration stays in the apps (no module below wsl/apps reads omegaconf)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PKG = ROOT / "wsl"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the wsl modules it imports anywhere in its body (top level or inside functions)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:  # `import wsl.zoo.table as t`, attributes of a module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_inside_wsl():
    found = cycles(import_graph())
    assert not found, "import cycles (function-local imports count too):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_only_the_apps_read_omegaconf():
    """Apps turn the composed config into the rooms' typed schemas; nothing below them takes a DictConfig."""
    offenders = []
    for name, path in _modules().items():
        if name.startswith("wsl.apps"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(m.split(".")[0] == "omegaconf" for m in mods):
                offenders.append(name)
    assert not offenders, f"omegaconf imported below wsl/apps: {sorted(set(offenders))}"


def test_every_app_has_a_schema_stored_in_hydras_config_store():
    """Each app module types its config (`typed_config`) with a schema that Hydra's ConfigStore holds."""
    from hydra.core.config_store import ConfigStore

    from wsl.apps.config import APP_SCHEMAS, app_schema, load_schemas

    apps = sorted(p.stem for p in (PKG / "apps").glob("*.py")
                  if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in ast.parse(p.read_text()).body))
    assert sorted(APP_SCHEMAS) == apps
    load_schemas()
    stored = ConfigStore.instance().repo["schema"]
    for app in apps:
        assert f"{app}.yaml" in stored and stored[f"{app}.yaml"].node._metadata.object_type is app_schema(app)
        assert "def typed_config" in (PKG / "apps" / f"{app}.py").read_text()
