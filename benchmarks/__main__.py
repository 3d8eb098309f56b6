"""Entry point: ``python -m benchmarks NAME [--quick] [--out DIR] ...``."""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = {
    "celeba_scaling": "benchmarks.celeba_scaling",
    "converged": "benchmarks.converged",
    "converged_cost": "benchmarks.converged_cost",
    "memory": "benchmarks.memory",
    "methods": "benchmarks.methods",
    "multifashion": "benchmarks.multifashion",
    "multimnist": "benchmarks.multimnist",
    "mtrl": "benchmarks.mtrl",
    "perf": "benchmarks.perf",
    "qm9": "benchmarks.qm9",
    "toy": "benchmarks.toy",
    "solver": "benchmarks.solver",
}


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(prog="python -m benchmarks")
  parser.add_argument("name", choices=sorted(BENCHMARKS))
  args, rest = parser.parse_known_args(argv)
  module = importlib.import_module(BENCHMARKS[args.name])
  return module.main(rest)


if __name__ == "__main__":
  main()
