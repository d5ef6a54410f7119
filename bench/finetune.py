"""Run the fine-tune benchmark: python bench/finetune.py [--quick] [--json]."""
import argparse
import sys

from engine.benchmarks import finetune

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=finetune.__doc__.splitlines()[0])
    finetune.add_arguments(p)
    sys.exit(finetune.run(p.parse_args()))
