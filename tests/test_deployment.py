"""`--sdm conda`: every rule's environment holds pyproject.toml's pins and the workflow's own
package. No conda client can be installed on our machines (none on PyPI or Debian, and no
conda-forge), so `snakemake --sdm conda` itself is not run here: the environment file is checked
against pyproject.toml, and the post-deploy script Snakemake runs in a fresh environment is run
in a fresh virtual environment instead."""

import os
import re
import subprocess
import sys
import tomllib

import pytest
import yaml
from fixtures import REPO

ENV = REPO / "workflow" / "envs" / "teddy.yaml"
POST_DEPLOY = REPO / "workflow" / "envs" / "teddy.post-deploy.sh"


def test_the_environment_holds_the_pins_of_pyproject():
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pip = next(d["pip"] for d in yaml.safe_load(ENV.read_text())["dependencies"] if isinstance(d, dict))
    normalise = lambda spec: re.sub(r"\s+", "", spec)  # noqa: E731
    assert sorted(map(normalise, pip)) == sorted(map(normalise, pins))
    rules = " ".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    assert rules.count('conda:\n        "../envs/teddy.yaml"') >= 11  # every rule names it


def test_the_snakefile_tells_the_post_deploy_script_where_the_repository_is():
    assert 'os.environ.setdefault("TEDDY_REPOSITORY", str(Path(workflow.basedir).parent))' in \
        (REPO / "workflow" / "Snakefile").read_text()
    assert os.access(POST_DEPLOY, os.X_OK)


@pytest.mark.slow
def test_the_post_deploy_script_installs_the_package_into_a_fresh_environment(tmp_path):
    """As Snakemake runs it: the environment's python first on PATH, TEDDY_REPOSITORY set. After
    it, `import teddy` in that environment finds the installed package, not the repository's src/."""
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    run_env = {**os.environ, "PATH": f"{env / 'bin'}:{os.environ['PATH']}", "TEDDY_REPOSITORY": str(REPO)}
    run_env.pop("PYTHONPATH", None)
    subprocess.run(["bash", str(POST_DEPLOY)], check=True, env=run_env, cwd=tmp_path, capture_output=True,
                   timeout=600)
    found = subprocess.run([str(env / "bin" / "python"), "-c", "import teddy, teddy.errors; print(teddy.__file__)"],
                           check=True, env=run_env, cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert found.startswith(str(env)) and "site-packages" in found
    missing = subprocess.run(["bash", str(POST_DEPLOY)], env={**run_env, "TEDDY_REPOSITORY": ""}, cwd=tmp_path,
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "TEDDY_REPOSITORY is set by workflow/Snakefile" in missing.stderr
