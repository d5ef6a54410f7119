"""Build glue that pyproject.toml cannot say: the shipped assets travel inside the wheel.

data/ stays at the repository's top level (the layout is the user's); building a wheel copies
it into the engine package as engine/_data, where engine.assets.data_dir() finds it.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ASSETS = ("baselines/*.safetensors", "baselines/*.json", "profiles/*.json")


class BuildPyWithAssets(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads data/ in place
        out = Path(self.build_lib) / "engine" / "_data"
        for pattern in ASSETS:
            for src in sorted(Path("data").glob(pattern)):
                dst = out / src.relative_to("data")
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)


setup(cmdclass={"build_py": BuildPyWithAssets})
