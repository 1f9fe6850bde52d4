"""`bn_keras` has no import circle, between modules or between rooms.

Every `import` statement of the package counts, at module level or inside
a function (a lazy import is still a dependency). A room is a top-level
module or subpackage of `bn_keras` (`registry`, `layers`, `models`, ...):
a lower room never imports a higher one, directly or through a third.
"""

import ast
import pathlib

import bn_keras

PACKAGE = pathlib.Path(bn_keras.__file__).parent


def _modules():
    """`{dotted name: path}` for every module of the package."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(path, modules):
    """The modules of the package that the file at `path` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
    return {name for name in found if name in modules}


def import_graph():
    modules = _modules()
    return {
        name: _imports(path, modules) - {name}
        for name, path in modules.items()
    }


def room_graph(graph):
    """Edges between rooms; the package's `__init__` belongs to none."""

    def room(name):
        parts = name.split(".")
        return parts[1] if len(parts) > 1 else None

    rooms = {}
    for name, targets in graph.items():
        for target in targets:
            a, b = room(name), room(target)
            if a and b and a != b:
                rooms.setdefault(a, set()).add(b)
    return rooms


def cycles(graph):
    """The strongly connected components of more than one node, sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_cycles_finds_a_circle_through_a_third_node():
    graph = {"registry": {"layers"}, "layers": {"block"}, "block": {"registry"}}
    assert cycles(graph) == [["block", "layers", "registry"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    # `get_normalization` imports the layers inside the function.
    assert "bn_keras.layers._normalization_spec" in graph["bn_keras.registry"]
    assert "bn_keras._names" in graph["bn_keras.layers.bn_block"]


def test_no_module_import_circle():
    assert cycles(import_graph()) == []


def test_no_room_import_circle():
    rooms = room_graph(import_graph())
    assert cycles(rooms) == []
    # The stack, bottom up: the names, the layers, the registry that
    # builds layers from names, the model functions.
    assert "registry" not in rooms["layers"]
    assert rooms.get("_names", set()) == set()
    assert "layers" in rooms["registry"]
