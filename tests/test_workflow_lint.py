"""`snakemake --lint` reports nothing: a conda environment per rule, functions only in
common.smk, no hard-coded path params; and every rule's environment pins what pyproject.toml pins."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_snakemake_lint_is_clean():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--snakefile", str(REPO / "workflow" / "Snakefile"),
                           "--directory", str(REPO)], capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Lints for" not in out and "good condition" in out, out[-3000:]


def test_the_rule_environment_pins_what_pyproject_pins():
    pyproject = (REPO / "pyproject.toml").read_text()
    block = pyproject[pyproject.index("dependencies = ["):]
    wanted = re.findall(r'"([^"]+)"', block[:block.index("]")])
    env = yaml.safe_load((REPO / "workflow" / "envs" / "teddy.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip) == sorted(wanted)


def test_rule_files_hold_rules_and_the_scripts_no_config():
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        if smk.name != "common.smk":
            assert not re.search(r"^def ", smk.read_text(), re.M), smk.name
    for script in (REPO / "workflow" / "scripts").glob("*.py"):
        assert "snakemake.config" not in script.read_text(), script.name
