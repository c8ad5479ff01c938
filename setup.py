"""What pyproject.toml says only with an "experimental" warning at every install: the C extension
that reads route arrays straight into doubles (lake/_routes.c, used by lake/routes.py). Optional:
an install without a C compiler goes on, and lake.routes then reads every array with msgspec."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("lake._routes", ["lake/_routes.c"], optional=True)])
