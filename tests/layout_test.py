"""The shape of the code: imports run one way, no sys.path edits, short functions.

Library modules are the installed ones (setup.cfg: py_modules and packages). Their imports of
each other, read from the source (every import statement, at the top or inside a function),
must form no cycle, and none may import from scripts/, bench/, docs/ or tests/.
"""

import ast
import configparser
import glob
import os

from absl.testing import absltest

from tests import testutil

ROOT = testutil.REPO_ROOT
MAX_FUNCTION_LINES = 60
MAX_TRAIN_PY_LINES = 350  # The trainer reads top to bottom in one sitting.
# Functions allowed past MAX_FUNCTION_LINES, (file, name): none today.
LONG_FUNCTIONS: set[tuple[str, str]] = set()


def library_modules() -> dict[str, str]:
  """Module name -> source path, for every module setup.cfg installs."""
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, 'setup.cfg'))
  modules = {m: os.path.join(ROOT, f'{m}.py') for m in cfg['options']['py_modules'].split()}
  for package in cfg['options']['packages'].split():
    for path in glob.glob(os.path.join(ROOT, package, '*.py')):
      name = os.path.splitext(os.path.basename(path))[0]
      modules[package if name == '__init__' else f'{package}.{name}'] = path
  return modules


def imported_names(path: str) -> set[str]:
  """Every module name an import statement in `path` names (`from a import b`: a and a.b)."""
  names = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names.add(node.module)
      names.update(f'{node.module}.{alias.name}' for alias in node.names)
  return names


def python_files() -> list[str]:
  """The repo's own Python files (the virtualenv and build folders aside)."""
  skip = ('.venv', 'build', '.git')
  return [
    p
    for p in glob.glob(os.path.join(ROOT, '**', '*.py'), recursive=True)
    if not os.path.relpath(p, ROOT).startswith(skip)
  ]


def sys_path_edits(tree: ast.AST):
  """Line numbers of `sys.path.<method>(...)` calls and assignments to sys.path[...]."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
      if ast.unparse(node.func.value) == 'sys.path':
        yield node.lineno
    targets = getattr(node, 'targets', None) or [getattr(node, 'target', None)]
    for t in targets:
      if isinstance(t, ast.AST) and ast.unparse(getattr(t, 'value', t)) == 'sys.path':
        yield node.lineno


class LayoutTest(absltest.TestCase):
  def test_library_imports_form_no_cycle(self):
    modules = library_modules()
    graph = {m: sorted(imported_names(p) & set(modules)) for m, p in modules.items()}
    state = {}  # module -> 'open' while on the current path, 'done' after.

    def visit(module, path):
      if state.get(module) == 'open':
        self.fail('import cycle: ' + ' -> '.join([*path[path.index(module) :], module]))
      if state.get(module) == 'done':
        return
      state[module] = 'open'
      for dep in graph[module]:
        visit(dep, [*path, module])
      state[module] = 'done'

    for module in sorted(graph):
      visit(module, [])
    self.assertIn('checkpointing', graph['train'])  # The graph is really read.

  def test_the_library_imports_no_script_bench_doc_or_test(self):
    for module, path in library_modules().items():
      outside = sorted(
        n for n in imported_names(path) if n.split('.')[0] in ('scripts', 'bench', 'docs', 'tests')
      )
      self.assertEqual(outside, [], f'{module} imports {outside}')

  def test_nothing_but_tests_imports_tests(self):
    for path in python_files():
      if os.path.relpath(path, ROOT).startswith('tests'):
        continue
      names = [n for n in imported_names(path) if n.split('.')[0] == 'tests']
      self.assertEqual(names, [], os.path.relpath(path, ROOT))

  def test_no_sys_path_edits(self):
    """Scripts import the installed package; none edits sys.path to find it."""
    for path in python_files():
      edits = list(sys_path_edits(ast.parse(open(path).read())))
      self.assertEqual(edits, [], f'{os.path.relpath(path, ROOT)} edits sys.path at lines {edits}')

  def test_every_top_level_module_is_installed(self):
    """A module missing from setup.cfg works in a checkout but not in a wheel or a clean venv."""
    top_level = {os.path.splitext(os.path.basename(p))[0] for p in glob.glob(f'{ROOT}/*.py')}
    self.assertEqual(
      top_level - {'setup'}, {m for m in library_modules() if '.' not in m} - {'configs', 'nets'}
    )

  def test_train_py_is_short(self):
    with open(os.path.join(ROOT, 'train.py')) as f:
      self.assertLessEqual(len(f.readlines()), MAX_TRAIN_PY_LINES)

  def test_library_functions_are_short(self):
    for path in library_modules().values():
      name = os.path.relpath(path, ROOT)
      for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.FunctionDef) and (name, node.name) not in LONG_FUNCTIONS:
          lines = node.end_lineno - node.lineno + 1
          self.assertLessEqual(lines, MAX_FUNCTION_LINES, f'{name}: {node.name} has {lines}')


if __name__ == '__main__':
  absltest.main()
