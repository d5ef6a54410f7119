"""Run the dashboard benchmark: python bench/dashboard.py [--quick] [--json]."""
import argparse
import sys

from explorer.benchmarks import dashboard

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=dashboard.__doc__.splitlines()[0])
    dashboard.add_arguments(p)
    sys.exit(dashboard.run(p.parse_args()))
