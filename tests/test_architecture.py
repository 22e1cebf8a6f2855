"""Dependencies point one way: no import cycles among autodeco's modules, and the model class
knows no decode loop (cli -> serving, evaluation, training -> engine -> decoding -> modeling)."""

import ast
from pathlib import Path

import autodeco

PACKAGE = Path(autodeco.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """The autodeco modules ``name`` imports anywhere in its file (inside functions too, and
    ``import_module("...")`` calls), each resolved to the module it names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else ".".join(name.split(".")[: -node.level] + [node.module])
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
            found.add(node.args[0].value)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: _imports(name) for name in MODULES if name != "autodeco"}  # the package's own __init__ imports on behalf of users


def _cycle() -> list[str] | None:
    """One import cycle among the modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [module, target] if target in path else [module, target]
            if target not in state and (found := visit(target, path + [module])):
                return found
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state and (found := visit(module, [])):
            return found
    return None


def test_no_module_imports_itself_round_a_cycle():
    assert _cycle() is None, " -> ".join(_cycle())


def test_the_cycle_finder_finds_a_cycle():
    GRAPH["autodeco.heads"].add("autodeco.decoding")
    try:
        assert _cycle() is not None
    finally:
        GRAPH["autodeco.heads"].discard("autodeco.decoding")


def _reachable(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for target in GRAPH.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_model_the_sampling_math_and_the_vllm_plugin_know_no_decode_loop():
    above = {"autodeco.decoding", "autodeco.engine", "autodeco.speculative", "autodeco.cli"}
    above |= {m for m in MODULES if m.startswith(("autodeco.serving", "autodeco.evaluation", "autodeco.training"))}
    below = ["autodeco.modeling", "autodeco.heads", "autodeco.sampling", "autodeco.kv_cache", "autodeco.generation"]
    for module in below + [m for m in MODULES if m.startswith("autodeco.integrations")]:
        assert not _reachable(module) & above, f"{module} reaches {sorted(_reachable(module) & above)}"
