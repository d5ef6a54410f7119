"""Run the cost-model check (same as ``bitscape bench cost``): python bench/cost.py [--json] [--quick] [--write-profile PATH]."""
import argparse
import sys

from engine.benchmarks import cost

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=cost.__doc__.splitlines()[0])
    cost.add_arguments(parser)
    sys.exit(cost.run(parser.parse_args()))
