"""Checks that the environment is one consistent set of packages.

`pip check` verifies declared requirements; it does not notice two distributions writing the same
import package (e.g. `seqio` and `seqio-nightly`, or `tensorflow-datasets` and `tfds-nightly`).
This script does both, and exits non-zero naming the problem.

    python scripts/check_install.py
"""
import collections
import importlib.metadata as md
import subprocess
import sys

# Import packages that must be provided by exactly one installed distribution.
MODULES = ("seqio", "tensorflow_datasets", "tensorflow", "t5", "sentencepiece", "jax", "flax")


def providers_by_module() -> dict[str, list[str]]:
  """Maps each top-level import package to the distributions that install files into it."""
  owners = collections.defaultdict(set)
  for dist in md.distributions():
    name = dist.metadata["Name"]
    for f in dist.files or ():
      top = f.parts[0] if f.parts else ""
      if top.endswith((".dist-info", ".egg-info", ".data")) or top in ("..", "__pycache__"):
        continue
      owners[top.removesuffix(".py")].add(name)
  return {m: sorted(owners.get(m, ())) for m in MODULES}


def main() -> int:
  problems = []
  for module, dists in providers_by_module().items():
    if len(dists) != 1:
      problems.append(f"import package '{module}' is provided by {len(dists)} distributions: {dists}")
  check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
  if check.returncode != 0:
    problems.append("pip check failed:\n" + check.stdout + check.stderr)
  if problems:
    print("Environment check FAILED:\n- " + "\n- ".join(problems), file=sys.stderr)
    return 1
  print("Environment check ok: pip check clean; one distribution each for " + ", ".join(MODULES))
  return 0


if __name__ == "__main__":
  sys.exit(main())
