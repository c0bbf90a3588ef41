"""The wheel's layout (the metadata is in pyproject.toml).

The repository keeps its layers as top-level folders (cli/, storage/, tasks/, flows/,
deployments/ beside cegraph/); they install inside the `cegraph` package, as `cegraph.cli`,
`cegraph.storage`, ..., so the distribution claims no import name but `cegraph`. In a checkout
`cegraph/__init__.py` finds them beside itself.
"""

from setuptools import find_namespace_packages, setup

LAYERS = ("cli", "storage", "tasks", "flows", "deployments")


def _packages(top: str) -> list[str]:
    return find_namespace_packages(include=[top, f"{top}.*"], exclude=["*.__pycache__"])


setup(
    packages=_packages("cegraph") + [f"cegraph.{p}" for layer in LAYERS for p in _packages(layer)],
    package_dir={f"cegraph.{layer}": layer for layer in LAYERS},
)
