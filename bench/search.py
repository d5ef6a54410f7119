"""Run the search benchmark: python bench/search.py [--quick] [--json]."""
import argparse
import sys

from engine.benchmarks import search

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=search.__doc__.splitlines()[0])
    search.add_arguments(p)
    sys.exit(search.run(p.parse_args()))
