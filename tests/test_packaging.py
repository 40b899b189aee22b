"""A built wheel works outside the repository: the resources ship as package data.

The wheel is built offline from a copy of the sources (``pip wheel --no-deps --no-build-isolation
--no-index``; setuptools comes from the running environment), installed with ``pip install
--target``, and run from a temporary directory with ``PYTHONPATH`` pointing at that install, so
the installed copy is imported instead of the editable one. The CLI runs under an audit hook that
lists every file it opens: the built-in synth vocabulary and lexicon must be read from the install.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "hfasr" / "resources"

# Runs ``python -m hfasr ARGS`` and writes the path of every file opened to LOG (one a line).
DRIVER = """\
import os, runpy, sys
log = open(sys.argv[1], "w", buffering=1)
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        log.write(os.fsdecode(args[0]) + "\\n")
sys.addaudithook(hook)
sys.argv = ["hfasr", *sys.argv[2:]]
runpy.run_module("hfasr", run_name="__main__", alter_sys=True)
"""


def _resource_files() -> list[str]:
    """The package data files in the source tree (paths relative to ``hfasr/``)."""
    return sorted(p.relative_to(ROOT / "hfasr").as_posix() for p in RESOURCES.rglob("*")
                  if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """Build the wheel offline, install it with ``--target``; the paths and the env to run it."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "hfasr", src / "hfasr", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1"}
    env.pop("PYTHONPATH", None)
    whl_dir, site = tmp / "wheel", tmp / "site"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(whl_dir), str(src)], cwd=tmp, env=env)
    wheels = list(whl_dir.glob("hfasr-*.whl"))
    assert len(wheels) == 1, wheels
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site),
          str(wheels[0])], cwd=tmp, env=env)
    run_dir = tmp / "run"
    run_dir.mkdir()
    (run_dir / "driver.py").write_text(DRIVER)
    return {"wheel": wheels[0], "site": site, "run": run_dir, "env": {**env, "PYTHONPATH": str(site)}}


def _hfasr(installed: dict, log: str, *args: str) -> tuple[subprocess.CompletedProcess, list[Path]]:
    """``python -m hfasr ARGS`` from the install, in its temporary cwd; and the files it opened."""
    res = _run([sys.executable, "driver.py", log, *args], cwd=installed["run"], env=installed["env"])
    opened = [Path(p) for p in (installed["run"] / log).read_text().splitlines()]
    repo_pkg = (ROOT / "hfasr").resolve()
    from_repo = sorted({str(p) for p in opened if p.is_absolute() and p.resolve().is_relative_to(repo_pkg)})
    assert not from_repo, f"files read from the repository's package instead of the install: {from_repo}"
    return res, [p.resolve() for p in opened if p.is_absolute()]


def test_wheel_holds_the_resources(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    expected = _resource_files()
    assert {"lang/alnum.txt", "lang/digits.txt", "lang/yesno.txt", "synth/vocab.yaml"} <= {
        f.removeprefix("resources/") for f in expected}
    missing = [f for f in expected if f"hfasr/{f}" not in names]
    assert not missing, f"resource files not in the wheel (declare them as package data): {missing}"
    assert not [n for n in names if n.endswith(".pyc")]


def test_installed_copy_is_imported(installed):
    code = ("import json, hfasr, hfasr.resources as r\n"
            "from hfasr.data.synth import default_vocab_path\n"
            "from hfasr.lang.lexicon import builtin_lexicon_path, lexicon_dir\n"
            "print(json.dumps({'hfasr': hfasr.__file__, 'vocab': str(default_vocab_path()),\n"
            "  'lexdir': str(lexicon_dir()), 'yesno': str(builtin_lexicon_path('yesno')),\n"
            "  'alnum': str(r.path('lang/alnum.txt'))}))\n")
    res = _run([sys.executable, "-c", code], cwd=installed["run"], env=installed["env"])
    paths = {k: Path(v).resolve() for k, v in json.loads(res.stdout.strip().splitlines()[-1]).items()}
    site = installed["site"].resolve()
    for key, p in paths.items():
        assert p.is_relative_to(site), f"{key}: {p} is not under the install {site}"
        assert key == "hfasr" or p.exists(), f"{key}: {p} missing from the install"
    assert paths["hfasr"] == site / "hfasr" / "__init__.py"
    assert paths["vocab"] == site / "hfasr" / "resources" / "synth" / "vocab.yaml"


def test_prepare_synth_and_lang_from_the_wheel(installed):
    run, site = installed["run"], installed["site"].resolve()
    (run / "synth.yaml").write_text("num_train: 3\nnum_dev: 1\nnum_test: 1\n")
    res, opened = _hfasr(installed, "prepare.log", "prepare", "synth", "--out", "data", "--config", "synth.yaml")
    vocab_file = site / "hfasr" / "resources" / "synth" / "vocab.yaml"
    assert vocab_file in opened, "the synth vocabulary was not read from the installed package"
    assert "synth        train       3 utts" in res.stdout, res.stdout
    vocab = yaml.safe_load(vocab_file.read_text())
    words = {str(w) for ws in vocab["classes"].values() for w in ws}
    for split, n in (("train", 3), ("dev", 1), ("test", 1)):
        manifest = run / "data" / f"synth_cuts_{split}.jsonl.gz"
        assert manifest.is_file(), f"{manifest} not written"
        with gzip.open(manifest, "rt") as f:
            cuts = [json.loads(line) for line in f if line.strip()]
        assert len(cuts) == n
        for cut in cuts:
            text = " ".join(s["text"] for s in cut["supervisions"])
            assert text and set(text.split()) <= words, text
            wav = Path(cut["recording"]["sources"][0]["source"])
            assert (wav if wav.is_absolute() else run / wav).is_file()

    # a built-in-lexicon consumer: `hfasr lang` for synth reads lang/alnum.txt from the install
    res, opened = _hfasr(installed, "lang.log", "lang", "--data-dir", "data", "--task", "synth",
                         "--out", "lang", "--lm-order", "2")
    assert site / "hfasr" / "resources" / "lang" / "alnum.txt" in opened, \
        "the built-in lexicon was not read from the installed package"
    assert (run / "lang" / "lexicon.txt").is_file() and (run / "lang" / "G.fst").is_file()
    assert "lang: " in res.stdout and "words" in res.stdout, res.stdout
