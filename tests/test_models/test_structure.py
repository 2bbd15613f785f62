"""The package's module structure, read from the source (nothing imported).

- No import circle among the modules of ``poolformer_mm``: every explicit
  import statement counts, at the top of a module or inside a function, with
  relative imports resolved, and ``from pkg import name`` counting as an
  import of ``pkg.name`` where that is a module.
- The reference layers import nothing of the fast execution paths.
- No module of ``poolformer_mm/models/`` is over 500 lines.
"""
import ast
import os.path as osp
from pathlib import Path
from typing import Dict, List, Optional, Set

PACKAGE = 'poolformer_mm'
ROOT = Path(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
LAYERS = 'poolformer_mm.models.backbones.layers'
FAST = 'poolformer_mm.models.fast'
MAX_LINES = 500


def modules() -> Dict[str, Path]:
    """Every module of the package by dotted name (a package by the name
    of its ``__init__.py``)."""
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob('*.py')):
        parts = list(path.relative_to(ROOT).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts.pop()
        found['.'.join(parts)] = path
    return found


MODULES = modules()


def _known(name: str) -> Optional[str]:
    """``name`` or its longest prefix that is a module of the package."""
    while name and name not in MODULES:
        name = name.rpartition('.')[0]
    return name or None


def _in_package(name: Optional[str]) -> bool:
    return bool(name) and (name == PACKAGE or name.startswith(PACKAGE + '.'))


def imports(module: str) -> Set[str]:
    """The package's modules that ``module`` imports explicitly."""
    path = MODULES[module]
    is_package = path.name == '__init__.py'
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(
                _known(a.name) for a in node.names if _in_package(a.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # Level 1 is the package that holds the module (the module
                # itself for an __init__.py).
                base = module.split('.')[:None if is_package else -1]
                base = base[:len(base) - (node.level - 1)]
                source = '.'.join(base + ([node.module] if node.module
                                          else []))
            else:
                source = node.module
            if not _in_package(source):
                continue
            for alias in node.names:
                sub = f'{source}.{alias.name}'
                targets.add(sub if sub in MODULES else _known(source))
    targets.discard(None)
    targets.discard(module)
    return targets


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import circle of ``graph`` as ``[a, b, ..., a]``, or None."""
    done: Set[str] = set()
    path: List[str] = []
    on_path: Set[str] = set()

    def visit(node: str) -> Optional[List[str]]:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph[node]):
            if nxt in on_path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_the_graph_resolves_relative_and_submodule_imports():
    assert imports('poolformer_mm.models.fast') >= {
        'poolformer_mm.models.fast.cpu', 'poolformer_mm.models.fast.folded'
    }
    assert 'poolformer_mm.models.fast' in imports(
        'poolformer_mm.models.backbones.metaformer')
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == [
        'a', 'b', 'c', 'a'
    ]
    assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_no_import_cycle():
    graph = {m: imports(m) for m in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_layers_import_nothing_of_the_fast_paths():
    assert LAYERS in MODULES, f'no module {LAYERS}'
    fast = sorted(m for m in imports(LAYERS)
                  if m == FAST or m.startswith(FAST + '.'))
    assert fast == [], f'{LAYERS} imports {fast}'


def test_models_modules_are_small():
    models = ROOT / PACKAGE / 'models'
    long = {
        str(p.relative_to(ROOT)): n
        for p in sorted(models.rglob('*.py'))
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f'over {MAX_LINES} lines: {long}'
