"""Which packages the wheel holds; everything else about lrwd is in pyproject.toml.

The Hydra configs live in the top-level ``conf/`` folder of a checkout; a wheel ships them as the
package data of ``harness.conf``, where :data:`harness.config.CONF_DIR` finds them when
``conf/`` is not beside the ``harness`` package.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[
        *find_namespace_packages(include=["harness*", "analysis*"], exclude=["*.__pycache__"]),
        "harness.conf",
    ],
    package_dir={"harness.conf": "conf"},
    package_data={"harness.conf": ["*.yaml", "**/*.yaml"], "analysis": ["*.j2"]},
)
