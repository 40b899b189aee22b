"""CTC training (``hfasr train --criterion ctc``) on 6 real yesno utterances: HF and Adam lower
the dev loss and resume exactly; the CLI trains, decodes (greedy + TLG), aligns and reports;
config and data errors name the key, file or utterance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lhotse import load_manifest

from hfasr.cli import main
from hfasr.config import from_dict, load_config
from hfasr.data.batching import make_batches
from hfasr.data.corpora import manifest_path, prepare_corpus
from hfasr.data.features import FeatureConfig, compute_features
from hfasr.decode.ctc import collapse
from hfasr.errors import ConfigError, DataError, HfasrError
from hfasr.lang.prepare import LangConfig, prepare_lang
from hfasr.train.ctc import CtcTrainConfig, run_ctc_training, token_prior

ROOT = Path(__file__).resolve().parents[1]
TASK = "yesno"
TINY = {"model": "blstm", "num_threads": 1, "max_frames": 1300,
        "blstm": {"hidden_size": 16, "num_layers": 1, "subsample": 4},
        "hf": {"updates": 3, "heldout_fraction": 0.34, "curvature_fraction": 0.5, "curvature_min": 2,
               "optimizer": {"cg_max_iters": 8, "structural_damping": 0.03}},
        "adam": {"lr": 0.01, "epochs": 2, "reports_per_epoch": 2}}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.py)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, yesno_dir):
    """yesno cut down to 6 train / 3 dev / 3 test utterances, 23-bin fbank, and its lang dir."""
    root = tmp_path_factory.mktemp("yesno_ctc")
    prepare_corpus("yesno", root, corpus_dir=yesno_dir)
    for split, n in (("train", 6), ("dev", 3), ("test", 3)):
        p = manifest_path(root, TASK, split)
        load_manifest(p).subset(first=n).to_file(p)
    compute_features(root, TASK, FeatureConfig(num_mel_bins=23), progress=False)
    prepare_lang(root, TASK, root / "lang", LangConfig(lm_order=1))
    return root


def cfg_of(**over) -> CtcTrainConfig:
    d = json.loads(json.dumps(TINY))
    for k, v in over.items():
        if isinstance(v, dict):
            d[k] = {**d.get(k, {}), **v}
        else:
            d[k] = v
    return from_dict(CtcTrainConfig, d)


def history(path):
    return [json.loads(x) for x in (path / "history.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("opt", ["hf", "adam"])
def test_ctc_training_lowers_dev_loss_and_resumes_exactly(tiny, tmp_path, opt):
    full = run_ctc_training(cfg_of(optimizer=opt), tiny, TASK, tmp_path / "full", lang_dir=tiny / "lang",
                            progress=False)
    hist = history(tmp_path / "full")
    assert [h["update"] for h in hist] == list(range(len(hist)))
    assert len(hist) == (4 if opt == "hf" else 5)
    assert hist[-1]["dev_obj"] < hist[0]["dev_obj"]
    assert all(h["run"] == f"{opt}-ctc-blstm" and h["criterion"] == "ctc" and h["dev_wer"] is not None
               and h["dev_ter"] is not None for h in hist)
    assert hist == full.history
    if opt == "adam":
        assert hist[-1]["epoch"] == 2.0
    final = torch.load(tmp_path / "full/final.pt", weights_only=True)
    assert final["tokens"] == ["<blk>", "N", "Y"] and final["unit"] == "phone"
    assert (tmp_path / "full/tokens.txt").read_text() == "<blk> 0\nN 1\nY 2\n"

    # stop early, then resume with the full run's length: the same parameters and history
    short = {"hf": {"updates": 2}} if opt == "hf" else {"adam": {"epochs": 1}}
    run_ctc_training(cfg_of(optimizer=opt, **short), tiny, TASK, tmp_path / "part", lang_dir=tiny / "lang",
                     progress=False)
    with pytest.raises(HfasrError, match="--resume"):
        run_ctc_training(cfg_of(optimizer=opt), tiny, TASK, tmp_path / "part", lang_dir=tiny / "lang",
                         progress=False)
    with pytest.raises(ConfigError, match="different config.*normalize"):
        run_ctc_training(cfg_of(optimizer=opt, normalize="utterance"), tiny, TASK, tmp_path / "part",
                         lang_dir=tiny / "lang", resume=True, progress=False)
    # sections the run does not read (another model's, the other optimizer's) may differ
    unused = {"mdlstm": {"hidden_sizes": [3]}, **({"adam": {"lr": 0.5}} if opt == "hf" else {"hf": {"heldout_fraction": 0.2}})}
    again = run_ctc_training(cfg_of(optimizer=opt, **unused), tiny, TASK, tmp_path / "part", lang_dir=tiny / "lang",
                             resume=True, progress=False)
    for a, b in zip(full.task.net.parameters(), again.task.net.parameters()):
        assert torch.equal(a.detach(), b.detach())
    assert [h["dev_obj"] for h in history(tmp_path / "part")] == [h["dev_obj"] for h in hist]
    assert [h["dev_obj"] for h in again.history] == [h["dev_obj"] for h in full.history]
    assert "resumed from" in (tmp_path / "part/train.log").read_text()


@pytest.mark.parametrize("model,section", [
    ("mdlstm", {"hidden_sizes": [4, 4], "ff_sizes": [8], "freq_patches": [3], "input_patch": 4, "time_patch": 2}),
    ("dnn", {"hidden_dim": 32, "num_layers": 2, "context": 2}),
])
def test_other_models_train_with_hf(tiny, tmp_path, model, section):
    cfg = cfg_of(model=model, **{model: section}, hf={"updates": 1}, units="char")
    exp = run_ctc_training(cfg, tiny, TASK, tmp_path, progress=False)
    hist = history(tmp_path)
    assert len(hist) == 2 and hist[0]["run"] == f"hf-ctc-{model}"
    assert hist[1]["dev_obj"] < hist[0]["dev_obj"]
    assert exp.task.table.tokens == ["<blk>", "E", "N", "O", "S", "Y", "<space>"]
    assert exp.driver.objective.structural == (model == "mdlstm")


def test_cli_train_decode_align_results(tiny, tmp_path, capsys):
    conf = tmp_path / "ctc.yaml"
    conf.write_text(yaml.safe_dump({**TINY, "hf": {**TINY["hf"], "updates": 1}}))
    exp = tmp_path / "exp"
    common = ["--data-dir", str(tiny), "--task", TASK]
    rc = main(["train", "--criterion", "ctc", "--model", "blstm", "--optimizer", "hf", *common, "--lang",
               str(tiny / "lang"), "--out", str(exp / "ctc_blstm_hf"), "--config", str(conf), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "final.pt: hf-ctc-blstm, update 1," in out and out.count("report hf-ctc-blstm update=") == 2
    assert load_config(CtcTrainConfig, exp / "ctc_blstm_hf/config.yaml").hf.updates == 1
    model = exp / "ctc_blstm_hf/final.pt"
    dec = exp / "ctc_blstm_hf/decode_test"
    rc = main(["ctc-decode", "--model", str(model), *common, "--lang", str(tiny / "lang"), "--out", str(dec),
               "--dev-split", "dev", "--lm-weights", "0.5,1", "--word-penalties", "0"])
    assert rc == 0
    wer = (dec / "wer.txt").read_text()
    assert wer.startswith("%WER ") and "95% CI" in wer and "# greedy: %WER" in wer
    assert (dec / "greedy/ter.txt").read_text().startswith("%PER ")
    assert len((dec / "sweep.txt").read_text().splitlines()) == 3
    assert (exp / "ctc_blstm_hf/graph/TLG.fst").is_file()
    assert len((dec / "hyp.txt").read_text().splitlines()) == 3
    capsys.readouterr()
    assert main(["results", str(exp), "--task", TASK]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("| yesno | test | ctc_blstm_hf |"))
    wall = json.loads((exp / "ctc_blstm_hf/history.jsonl").read_text().splitlines()[-1])["wall_s"]
    assert row.endswith(f"| {wall:.0f} s |")  # training wall time from the run's history
    # forced alignment: every frame path collapses to the reference tokens
    ali = tmp_path / "ali.pt"
    assert main(["ctc-align", "--model", str(model), *common, "--split", "train", "--lang", str(tiny / "lang"),
                 "--out", str(ali)]) == 0
    d = torch.load(ali, weights_only=True)
    refs = {c.id: c.supervisions[0].text for c in load_manifest(manifest_path(tiny, TASK, "train", "feats"))}
    assert len(d["cut_ids"]) == 6
    for cid, path, T in zip(d["cut_ids"], d["tokens"], d["input_frames"]):
        assert len(path) == -(-T // 4)  # subsample 4
        assert [d["token_table"][k] for k in collapse(path.tolist())] == [
            {"NO": "N", "YES": "Y"}[w] for w in refs[cid].split()]


def test_config_and_data_errors(tiny, tmp_path, capsys):
    with pytest.raises(ConfigError, match="key 'optimizer'.*'sgd'"):
        from_dict(CtcTrainConfig, {"optimizer": "sgd"})
    with pytest.raises(ConfigError, match="unknown key 'hiden_size'"):
        from_dict(CtcTrainConfig, {"blstm": {"hiden_size": 3}})
    with pytest.raises(ConfigError, match="key 'model'"):
        from_dict(CtcTrainConfig, {"model": "lstm"})
    # a partial hf.optimizer section keeps the CTC defaults (held-out ρ)
    cfg = from_dict(CtcTrainConfig, {"hf": {"optimizer": {"cg_max_iters": 7}}})
    assert cfg.hf.optimizer.rho_data == "heldout" and cfg.hf.optimizer.cg_max_iters == 7
    bad = tmp_path / "bad.yaml"
    bad.write_text("criterion: ctc\nadam: {lr: -1}\n")
    rc = main(["train", "--data-dir", str(tiny), "--task", TASK, "--out", str(tmp_path / "o"), "--config", str(bad)])
    assert rc == 2 and "bad.yaml" in capsys.readouterr().err
    rc = main(["train", "--data-dir", str(tiny), "--task", TASK, "--out", str(tmp_path / "o")])
    assert rc == 2 and "--ali-dir" in capsys.readouterr().err
    # a transcript word missing from the lexicon names the cut and the manifest
    lang = tmp_path / "lang"
    lang.mkdir()
    (lang / "lexicon.txt").write_text("NO N\n")
    with pytest.raises(DataError, match=r"cut '.*' of .*yesno_feats_train.*'YES'"):
        run_ctc_training(cfg_of(), tiny, TASK, tmp_path / "x", lang_dir=lang, progress=False)
    with pytest.raises(ConfigError, match="--lang"):
        run_ctc_training(cfg_of(), tiny, "mytask", tmp_path / "y", progress=False)
    with pytest.raises(DataError, match="feature manifest not found"):
        run_ctc_training(cfg_of(), tmp_path, TASK, tmp_path / "z", progress=False)
    rc = main(["ctc-decode", "--model", str(tmp_path / "nope.pt"), "--data-dir", str(tiny), "--task", TASK,
               "--lang", str(tiny / "lang"), "--out", str(tmp_path / "d")])
    assert rc == 2 and "checkpoint not found" in capsys.readouterr().err


def test_make_batches_bounds_padded_frames():
    lens = [5, 9, 3, 9, 4, 1]
    groups = make_batches(lens, 12)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert all(len(g) == 1 or len(g) * max(lens[i] for i in g) <= 12 for g in groups)
    assert groups[0] == [1]  # longest first; one utterance even if it alone exceeds the limit
    assert make_batches([20], 12) == [[0]]


def test_token_prior_counts_one_frame_per_token():
    p = token_prior([torch.tensor([1, 2, 2]), torch.tensor([1])], num_frames=20, num_tokens=4, floor=1e-3)
    # 2 x token 1, 2 x token 2, token 3 unseen (floor), blank the other 16 frames
    want = torch.tensor([16 / 20, 2 / 20, 2 / 20, 1e-3])
    assert torch.allclose(p, want / want.sum(), atol=1e-6)


def test_output_bias_prior_starts_below_uniform_outputs(tiny, tmp_path):
    """The prior output bias puts the initial model past the all-blank stage: lower initial dev
    CTC loss than the uniform-output (zero bias) start, and the bias is the log token prior."""
    init = {}
    for bias in ("prior", "zero"):
        tr = run_ctc_training(cfg_of(optimizer="adam", output_bias=bias, adam={"epochs": 1, "reports_per_epoch": 1}),
                              tiny, TASK, tmp_path / bias, lang_dir=tiny / "lang", progress=False)
        init[bias] = tr.history[0]["dev_obj"]
        if bias == "prior":
            y = tr.task.net.output.bias.detach()
        assert (tmp_path / bias / "final.pt").is_file()
    assert init["prior"] < init["zero"]
    q = torch.softmax(y, 0)
    assert int(q.argmax()) == 0 and q[0] > 0.5  # blank most frequent


def test_hf_fine_tunes_an_adam_model_from_init(tiny, tmp_path):
    """``keep_models`` keeps every report's model; ``--init``: HF starts from Adam's final.pt (its initial report is Adam's final dev loss)
    and never raises it (here Adam has converged on 6 utterances and HF's steps are rejected); a
    model of another architecture is an error naming the file."""
    adam = run_ctc_training(cfg_of(optimizer="adam", keep_models=True), tiny, TASK, tmp_path / "adam",
                            lang_dir=tiny / "lang", progress=False)
    # keep_models: every report's model (e.g. Adam's dev-best epoch as HF's start), the last = final.pt
    import torch

    kept = sorted(int(p.stem) for p in (tmp_path / "adam" / "models").glob("*.pt"))
    assert kept == [r["update"] for r in adam.history]
    last = torch.load(tmp_path / "adam" / "models" / f"{kept[-1]}.pt", weights_only=True)["state_dict"]
    final = torch.load(tmp_path / "adam" / "final.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(last[k], final[k]) for k in final)
    first = tmp_path / "adam" / "models" / f"{kept[1]}.pt"
    assert torch.load(first, weights_only=True)["tokens"] == torch.load(tmp_path / "adam" / "final.pt",
                                                                          weights_only=True)["tokens"]
    run_ctc_training(cfg_of(optimizer="hf", hf={"updates": 1}), tiny, TASK, tmp_path / "ft1", lang_dir=tiny / "lang",
                     progress=False, init=first)  # a kept epoch as the start
    ft = run_ctc_training(cfg_of(optimizer="hf"), tiny, TASK, tmp_path / "ft", lang_dir=tiny / "lang",
                          progress=False, init=tmp_path / "adam" / "final.pt")
    assert ft.history[0]["dev_obj"] == pytest.approx(adam.history[-1]["dev_obj"], rel=1e-5)
    assert ft.history[-1]["dev_obj"] <= ft.history[0]["dev_obj"] and len(ft.history) == 4
    # the start model is recorded for `hfasr report` (which adds Adam's time to the HF run's)
    assert (tmp_path / "ft" / "init.txt").read_text().strip() == str((tmp_path / "adam" / "final.pt").resolve())
    with pytest.raises(DataError, match=r"adam/final.pt: its model differs from this run's in \['hidden_size'\]"):
        run_ctc_training(cfg_of(optimizer="hf", blstm={"hidden_size": 5}), tiny, TASK, tmp_path / "bad",
                         lang_dir=tiny / "lang", progress=False, init=tmp_path / "adam" / "final.pt")


def test_select_makes_final_the_dev_best_kept_model(tiny, tmp_path):
    """``select: dev_obj``: final.pt is the kept model of the report with the lowest dev CTC loss
    (Adam's epoch to fine-tune from, chosen on dev); select needs keep_models."""
    import torch

    tr = run_ctc_training(cfg_of(optimizer="adam", keep_models=True, select="dev_obj", adam={"lr": 0.05, "epochs": 4}),
                          tiny, TASK, tmp_path / "a", lang_dir=tiny / "lang", progress=False)
    best = min(tr.history, key=lambda h: (h["dev_obj"], h["update"]))
    final = torch.load(tmp_path / "a" / "final.pt", weights_only=True)
    kept = torch.load(tmp_path / "a" / "models" / f"{best['update']}.pt", weights_only=True)["state_dict"]
    assert final["update"] == best["update"] and final["dev_obj"] == pytest.approx(best["dev_obj"])
    assert all(torch.equal(kept[k], final["state_dict"][k]) for k in kept)
    with pytest.raises(ConfigError, match="select: dev_obj needs keep_models"):
        cfg_of(optimizer="adam", select="dev_obj")
    with pytest.raises(ConfigError, match="key 'select': expected one of"):
        cfg_of(optimizer="adam", keep_models=True, select="dev_acc")


def test_recipe_ctc_stages_fine_tune_a_run_with_hf(tiny, tmp_path):
    """tools/ctc.sh (stages 10-11 of recipes/yesno/run.sh): the run ``blstm_adamhf`` trains with HF
    from ``exp/ctc_blstm_adam/final.pt`` (``--init``), with its own config ``conf/ctc_blstm_adamhf.yaml``;
    both are decoded, tabled and reported, and a re-run skips them."""
    exp, conf = tmp_path / "exp", tmp_path / "conf"
    exp.mkdir()
    conf.mkdir()
    (exp / "lang").symlink_to(tiny / "lang")
    (conf / "ctc_blstm_adam.yaml").write_text(yaml.safe_dump(TINY))
    (conf / "ctc_blstm_adamhf.yaml").write_text(yaml.safe_dump({**TINY, "hf": {**TINY["hf"], "updates": 2}}))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    cmd = ["bash", str(ROOT / "recipes/yesno/run.sh"), "--stage", "10", "--stop-stage", "11", "--data", str(tiny),
           "--exp", str(exp), "--conf", str(conf), "--ctc-runs", "blstm_adam blstm_adamhf"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    adam, ft = history(exp / "ctc_blstm_adam"), history(exp / "ctc_blstm_adamhf")
    assert adam[-1]["optimizer"] == "adam" and adam[-1]["epoch"] == 2
    assert [h["optimizer"] for h in ft] == ["hf"] * 3 and ft[-1]["update"] == 2
    assert ft[0]["dev_obj"] == pytest.approx(adam[-1]["dev_obj"], rel=1e-5)  # starts from Adam's model
    assert f"CTC: starting from {exp / 'ctc_blstm_adam' / 'final.pt'}" in r.stdout + r.stderr
    assert load_config(CtcTrainConfig, exp / "ctc_blstm_adamhf/config.yaml").hf.updates == 2
    table = (exp / "results.md").read_text()
    for run in ("ctc_blstm_adam", "ctc_blstm_adamhf"):
        assert (exp / run / "decode_test/wer.txt").read_text().startswith("%WER ")
        assert f"| yesno | test | {run} |" in table
    report = (exp / "report_ctc_blstm.md").read_text()
    assert "adam-ctc-blstm" in report and "hf-ctc-blstm" in report
    r2 = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert r2.returncode == 0 and r2.stdout.count("skipping") == 4, r2.stdout
