"""Run the kernel benchmark (same as ``bitscape bench kernels``): python bench/kernels.py [--json] [--quick]."""
import argparse
import sys

from engine.benchmarks import kernels

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=kernels.__doc__.splitlines()[0])
    kernels.add_arguments(parser)
    sys.exit(kernels.run(parser.parse_args()))
