"""Reproduction study of the papers' claims at small scale: `python bench/seeds.py [--quick] [--json] [--out F]`."""
import argparse
import sys

from engine.benchmarks import seeds

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=seeds.__doc__.splitlines()[0])
    seeds.add_arguments(parser)
    sys.exit(seeds.run(parser.parse_args()))
