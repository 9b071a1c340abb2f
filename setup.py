"""Package layout that pyproject.toml cannot express: the Hydra configs in the top-level ``conf/``
(the single source) are shipped inside the wheel as the package data ``segssl/conf``, so an
installed segssl finds them without a second copy committed under ``segssl/``."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["segssl", "segssl.*"]), "segssl.conf"],
    package_dir={"segssl.conf": "conf"},
    package_data={"segssl.conf": ["*.yaml", "**/*.yaml"]},
)
