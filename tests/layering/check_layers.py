"""The house's rules, checked on the sources (run by bazel test //...).

C++: each top-level folder is a room on a floor; a source may include
headers of its own room and of rooms on lower floors only (never sideways,
never up). Python: the package's modules import only downward (an acyclic
graph), never inside a function, and never a private name from a sibling.
Every violation is printed with the file and line; exit status 1 if any.
"""

import ast
import os
import re
import sys

# Floors, lowest first. A room may include any room on a lower floor.
FLOORS = [
    {"platform"},
    {"memory"},
    {"diff", "gather", "quant"},
    {"store"},
    {"mlp", "cache", "flash"},
    {"step"},
]
LEAVES = {"bindings", "bench", "examples", "tests", "tools", "third_party"}
FLOOR = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"/]+)/[^"]+"', re.M)
MAX_LIBRARY_LINES = 620
# The package's native modules (imported like any submodule).
EXTENSIONS = {"_sparse_mlp"}


def check_cpp(root, errors):
    rooms = sorted(FLOOR)
    for room in rooms:
        folder = os.path.join(root, room)
        if not os.path.isdir(folder):
            errors.append(f"{room}/: missing (a room of the house)")
            continue
        for name in sorted(os.listdir(folder)):
            if not name.endswith((".h", ".cc")):
                continue
            path = os.path.join(folder, name)
            text = open(path, encoding="utf-8").read()
            lines = text.count("\n")
            if lines > MAX_LIBRARY_LINES:
                errors.append(f"{room}/{name}: {lines} lines (library sources stay under "
                              f"{MAX_LIBRARY_LINES})")
            for m in INCLUDE.finditer(text):
                target = m.group(1)
                line = text.count("\n", 0, m.start()) + 1
                if target in LEAVES:
                    errors.append(f"{room}/{name}:{line}: includes {target}/, a leaf")
                elif target in FLOOR and target != room and FLOOR[target] >= FLOOR[room]:
                    errors.append(f"{room}/{name}:{line}: includes {target}/ (floor "
                                  f"{FLOOR[target]}) from {room}/ (floor {FLOOR[room]})")


def module_name(package_root, path):
    rel = os.path.relpath(path, os.path.dirname(package_root))[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def check_python(package_root, errors):
    modules = {}
    for folder, _, files in os.walk(package_root):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                modules[module_name(package_root, path)] = path
    graph = {name: set() for name in modules}
    for name, path in sorted(modules.items()):
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        rel = os.path.relpath(path, os.path.dirname(package_root))
        parents = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                parents[child] = node
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append((full if full in modules else base, alias.name))
            elif isinstance(node, ast.Import):
                targets = [(alias.name, None) for alias in node.names]
            targets = [(t, n) for t, n in targets if t.split(".")[0] == "sparse_mlp"]
            if not targets:
                continue
            scope = parents.get(node)
            while scope is not None and not isinstance(scope, (ast.FunctionDef,
                                                               ast.AsyncFunctionDef)):
                scope = parents.get(scope)
            if scope is not None and name != "sparse_mlp.__main__":
                errors.append(f"{rel}:{node.lineno}: imports sparse_mlp inside a function")
            for target, imported in targets:
                if target not in modules:
                    continue  # the native extension
                if (imported and imported.startswith("_") and not imported.startswith("__")
                        and f"{target}.{imported}" not in modules
                        and imported not in EXTENSIONS):
                    errors.append(f"{rel}:{node.lineno}: imports the private name "
                                  f"{imported} from {target}")
                if target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    # Cycles (a package __init__ importing its own submodules is the package
    # itself, not a cycle).
    state = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                if not any(a.startswith(b + ".") or b.startswith(a + ".")
                           for a, b in zip(cycle, cycle[1:])):
                    errors.append("import circle: " + " -> ".join(cycle))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def main(argv):
    root = argv[1] if len(argv) > 1 else os.getcwd()
    errors = []
    check_cpp(root, errors)
    check_python(os.path.join(root, "bindings", "sparse_mlp"), errors)
    for e in errors:
        print(e)
    print(f"{len(errors)} layering violation(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
