"""The shape of the code: imports run one way, no sys.path edits, short functions, no install.

Library modules are the top-level *.py files and the packages configs/ and nets/, which run in
place from the checkout. Their imports of each other, read from the source (every import
statement, at the top or inside a function), must form no cycle, and none may import from
scripts/, bench/, docs/ or tests/. `pip install .` installs the dependencies and no module.
"""

import ast
import configparser
import glob
import os
import shutil
import subprocess
import sys
import zipfile

from absl.testing import absltest

from tests import testutil

ROOT = testutil.REPO_ROOT
MAX_FUNCTION_LINES = 60
MAX_TRAIN_PY_LINES = 350  # The trainer reads top to bottom in one sitting.
# Functions allowed past MAX_FUNCTION_LINES, (file, name): none today.
LONG_FUNCTIONS: set[tuple[str, str]] = set()


LIBRARY_PACKAGES = ('configs', 'nets')


def library_modules() -> dict[str, str]:
  """Module name -> source path, for the top-level modules and the library packages."""
  modules = {
    os.path.splitext(os.path.basename(p))[0]: p for p in glob.glob(os.path.join(ROOT, '*.py'))
  }
  for package in LIBRARY_PACKAGES:
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

  def test_setup_cfg_names_no_module(self):
    """Empty lists, not absent ones: without them setuptools would discover modules itself."""
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, 'setup.cfg'))
    self.assertEqual(cfg['options']['py_modules'].split(), [])
    self.assertEqual(cfg['options']['packages'].split(), [])

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


class WheelTest(absltest.TestCase):
  def test_the_wheel_holds_metadata_only(self):
    """What `pip install .` would put on a user's path: no metrics.py, no configs/, nothing.

    Built from a copy of the packaging files and the library (setuptools writes build/ beside
    them), which is what setuptools would find and install if setup.cfg let it."""
    src, out = self.create_tempdir().full_path, self.create_tempdir().full_path
    for name in ('setup.cfg', 'pyproject.toml', 'README.md', *library_modules()):
      if '.' not in name and os.path.isdir(os.path.join(ROOT, name)):
        shutil.copytree(os.path.join(ROOT, name), os.path.join(src, name))
      elif '.' not in name or name.endswith(('.cfg', '.toml', '.md')):
        shutil.copy(os.path.join(ROOT, name if '.' in name else f'{name}.py'), src)
    proc = subprocess.run(
      [sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', '-w', out,
       src],
      capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
    (wheel,) = glob.glob(os.path.join(out, '*.whl'))
    names = zipfile.ZipFile(wheel).namelist()
    self.assertIn('s6jax-0.1.0.dist-info/METADATA', names)
    self.assertEqual([n for n in names if '.dist-info/' not in n], [], names)


if __name__ == '__main__':
  absltest.main()
