"""The package's import graph has no cycle, and ddpm_jax modules are imported at module level (function-local
imports of our own modules only in the command-line entry points, which defer JAX until flags are parsed).

Run by hand: ``python tests/test_import_graph.py`` prints the layers (modules in dependency order)."""
import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "ddpm_jax")
ENTRY_POINTS = {"ddpm_jax.main", "ddpm_jax.generate", "ddpm_jax.evaluate"}


def module_files() -> dict:
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].replace(os.sep, ".")
                out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(folder, name)
    return out


def imports_of(path: str, modules: dict, module_level: bool) -> set:
    """ddpm_jax modules imported by the file (at module level, or inside functions)."""
    tree = ast.parse(open(path).read())
    nodes = tree.body if module_level else [n for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef,
                                                                                      ast.AsyncFunctionDef))
                                              for n in ast.walk(f)]
    found = set()
    for node in (n for top in nodes for n in ([top] if not module_level else ast.walk(top))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from pkg import submodule" imports the submodule; "from pkg import name" the package
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("ddpm_jax") and name in modules:
                found.add(name)
    return found


def graph(module_level: bool = True) -> dict:
    modules = module_files()
    return {m: imports_of(p, modules, module_level) - {m} for m, p in modules.items()}


def find_cycle(edges: dict):
    """One import cycle as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                cycle = visit(n)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state:
            cycle = visit(m)
            if cycle:
                return cycle
    return None


def test_no_import_cycle_in_ddpm_jax():
    edges = graph()
    assert len(edges) > 50
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_find_cycle_finds_a_planted_cycle():
    edges = graph()
    edges["ddpm_jax.diffusion.schedules"] = edges["ddpm_jax.diffusion.schedules"] | {"ddpm_jax.training.loop"}
    cycle = find_cycle(edges)
    assert cycle and cycle[0] == cycle[-1]


def test_own_modules_are_imported_at_module_level_outside_the_entry_points():
    local = {m: sorted(v) for m, v in graph(module_level=False).items() if v and m not in ENTRY_POINTS}
    assert not local, f"function-local imports of ddpm_jax modules: {local}"


def test_layers_point_one_way():
    """DESIGN.md's boundaries: the math and the models know no training, pipelines and training know each other not,
    and the workdir layer sits below both."""
    edges = graph()
    forbidden = {"ddpm_jax.diffusion": ("ddpm_jax.models", "ddpm_jax.training", "ddpm_jax.data", "ddpm_jax.tasks"),
                 "ddpm_jax.models": ("ddpm_jax.training", "ddpm_jax.data", "ddpm_jax.tasks", "ddpm_jax.pipelines"),
                 "ddpm_jax.data": ("ddpm_jax.models", "ddpm_jax.training", "ddpm_jax.tasks"),
                 "ddpm_jax.workdir": ("ddpm_jax.training", "ddpm_jax.pipelines", "ddpm_jax.tasks"),
                 "ddpm_jax.tasks": ("ddpm_jax.training", "ddpm_jax.pipelines", "ddpm_jax.evaluation.quality"),
                 "ddpm_jax.training": ("ddpm_jax.pipelines.workdir", "ddpm_jax.pipelines.cascade"),
                 "ddpm_jax.pipelines": ("ddpm_jax.training",),
                 "ddpm_jax.evaluation": ("ddpm_jax.training",)}
    bad = [(m, n) for m, deps in edges.items() for layer, banned in forbidden.items() if m.startswith(layer)
           for n in deps if n.startswith(banned)]
    assert not bad, bad


if __name__ == "__main__":
    edges, done, layers = graph(), set(), []
    while len(done) < len(edges):
        layer = sorted(m for m, deps in edges.items() if m not in done and
                       all(d in done for d in deps))
        if not layer:
            sys.exit(f"cycle: {' -> '.join(find_cycle(edges))}")
        layers.append(layer)
        done |= set(layer)
    for i, layer in enumerate(layers):
        print(f"layer {i}: {', '.join(layer)}")
    print(f"{len(edges)} modules, no import cycle")
