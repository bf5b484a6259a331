#!/usr/bin/env bash
# Snakemake runs this once inside the environment it has just created from teddy.yaml
# (`--sdm conda`): the workflow's own package, from the repository the Snakefile names in
# TEDDY_REPOSITORY, is installed into the environment, so `import teddy` works in every job on a
# compute node without the host's virtual environment or PYTHONPATH. --no-deps: teddy.yaml holds
# the pins of pyproject.toml already.
set -euo pipefail
python -m pip install --no-deps "${TEDDY_REPOSITORY:?TEDDY_REPOSITORY is set by workflow/Snakefile}"
