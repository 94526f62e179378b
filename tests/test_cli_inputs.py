"""The CLI and config files as a careful and a hostile user would drive them (issue 11): counts >= 1, config
values validated with the key named before any work, options that override a config only when given,
``--out`` at a file, user strings printed literally, consent flags, SIGTERM."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from trustvision.auditor import AuditConfig
from trustvision.cli.app import app
from trustvision.errors import TrustVisionError

runner = CliRunner()
MNIST_MODEL = ["--arch", "trustvision:smallcnn", "--num-classes", "10", "--channels", "1"]


def _lines(output: str) -> list[str]:
    return [ln for ln in output.strip().splitlines() if ln.strip()]


def one_line_error(args: list[str]) -> str:
    """Invoke the CLI; it must exit 2 with exactly one line (no traceback).  Returns that line."""
    r = runner.invoke(app, args)
    lines = _lines(r.output)
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), (r.exit_code, r.output,
                                                                                      r.exception)
    return lines[0]


@pytest.fixture(scope="module")
def weights(mnist_setup, tmp_path_factory) -> Path:
    """The cached MNIST CNN as a .safetensors file (audit it with MNIST_MODEL)."""
    from safetensors.torch import save_file
    w = tmp_path_factory.mktemp("model") / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in mnist_setup[0].state_dict().items()}, str(w))
    return w


# ------------------------------------------------------------------ 1. --n >= 1, n_images >= 1
N_COMMANDS = {
    "audit": ["audit", "--model", "missing.safetensors", "--data", "mnist"],
    "attack": ["attack", "fgsm", "--model", "missing.safetensors", "--data", "mnist"],
    "explain": ["explain", "--model", "missing.safetensors", "--data", "mnist"],
    "certify": ["certify", "--model", "missing.safetensors", "--data", "mnist"],
    "uap": ["uap", "--model", "missing.safetensors", "--eval", "mnist"],
    "demo": ["demo"],
}


@pytest.mark.parametrize("value", ["-5", "0"])
@pytest.mark.parametrize("command", sorted(N_COMMANDS))
def test_n_must_be_at_least_one_on_every_command(command, value, tmp_path):
    line = one_line_error([*N_COMMANDS[command], "--out", str(tmp_path / "o"), "--n", value])
    assert "--n must be >= 1" in line and value in line          # named before the (missing) model is read
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", [-5, 0])
def test_n_images_in_a_config_must_be_at_least_one(value, tmp_path):
    toml = tmp_path / "audit.toml"
    toml.write_text(f"n_images = {value}\n")
    line = one_line_error(["audit", "--model", "missing.safetensors", "--data", "mnist", "--config", str(toml)])
    assert "n_images must be >= 1" in line and str(toml) in line
    with pytest.raises(TrustVisionError, match="n_images must be >= 1"):
        AuditConfig(n_images=value)


# ------------------------------------------------------------------ 2. config values validated with the key
BAD_CONFIGS = [
    ('n_images = "abc"\n', "n_images must be an integer, got 'abc'"),
    ("batch_size = true\n", "batch_size must be an integer, got True"),
    ("robustness = 5\n", "robustness must be a table, got 5"),
    ('gates = "clean_accuracy=0.5"\n', "gates must be a list of strings, got 'clean_accuracy=0.5'"),
    ('sections = "clean"\n', "sections must be a list of strings"),
    ('[robustness]\nattacks = "pgd"\n', "robustness.attacks must be a list of strings, got 'pgd'"),
    ('[robustness]\neps_linf = ["a"]\n', "robustness.eps_linf must be a list of numbers, got ['a']"),
    ("[robustness]\nattack_options = { pgd = 5 }\n", "robustness.attack_options must be a table of tables"),
    ('[robustness]\nseed = "1"\n', "robustness.seed must be an integer"),
    ('[explain]\nk_range = "2"\n', "explain.k_range must be a list of integers"),
    ('[certify]\nsigma = "big"\n', "certify.sigma must be a number"),
    ('[uap]\ntransfer = "evil.py:make"\n', "uap.transfer must be a list of strings"),
    ("[robustness]\nbogus = 1\n", "[robustness] unknown key(s) ['bogus']"),
    ("bogus = 1\n", "unknown key(s) ['bogus']"),                                   # today's message, kept
    ('[robustness]\nattacks = ["pgd", "magic"]\n', "unknown attack(s) ['magic']"),  # today's message, kept
]


@pytest.mark.parametrize("text,expected", BAD_CONFIGS)
def test_config_values_are_validated_with_the_key_before_any_work(text, expected, tmp_path):
    toml = tmp_path / "audit.toml"
    toml.write_text(text)
    line = one_line_error(["audit", "--model", str(tmp_path / "missing.safetensors"), "--data", "mnist",
                           "--config", str(toml), "--out", str(tmp_path / "o")])
    assert expected in line and f"{toml}:" in line and "missing.safetensors" not in line
    assert not (tmp_path / "o").exists()


def test_python_config_objects_are_validated_too():
    from trustvision.evaluation.sections.certify import CertifyConfig
    from trustvision.evaluation.sections.explain import ExplainConfig
    with pytest.raises(TrustVisionError, match=r"robustness\.attacks must be a list of strings, got 'pgd'"):
        AuditConfig(robustness={"attacks": "pgd"})
    with pytest.raises(TrustVisionError, match="gates must be a list of strings"):
        AuditConfig(gates="clean_accuracy=0.5")
    with pytest.raises(TrustVisionError, match="k_range must be a list of integers"):
        ExplainConfig(k_range="28")
    with pytest.raises(TrustVisionError, match="radii must be a list of numbers"):
        CertifyConfig(radii=["a"])
    cfg = AuditConfig(n_images=None, robustness={"attacks": ["fgsm"], "eps_linf": [0, 1, 0.5]})  # ints are numbers
    assert cfg.robustness.eps_linf == [0.0, 0.5, 1.0] and cfg.n_images is None


# ------------------------------------------------------------------ 3. options override a config only when given
def test_config_batch_size_and_seed_are_honoured_unless_given(weights, tmp_path, monkeypatch):
    from trustvision.cli.commands import audit as audit_cmd
    seen = []
    monkeypatch.setattr(audit_cmd, "run_audit", lambda clf, ds, cfg, out, spec, **kw: seen.append(cfg) or 0)
    toml = tmp_path / "audit.toml"
    toml.write_text("n_images = 7\nbatch_size = 256\nseed = 5\nresume = false\n[robustness]\nseed = 9\n"
                    'attacks = ["fgsm"]\n')
    base = ["audit", "--model", str(weights), *MNIST_MODEL, "--data", "mnist", "--config", str(toml),
            "--out", str(tmp_path / "o")]
    assert runner.invoke(app, base).exit_code == 0
    assert runner.invoke(app, [*base, "--batch-size", "32", "--seed", "3", "--n", "4"]).exit_code == 0
    file_cfg, given = seen
    assert (file_cfg.batch_size, file_cfg.seed, file_cfg.n_images, file_cfg.resume) == (256, 5, 7, False)
    assert file_cfg.robustness.seed == 9 and file_cfg.robustness.attacks == ["fgsm"]
    assert (given.batch_size, given.seed, given.n_images, given.robustness.seed) == (32, 3, 4, 3)
    assert runner.invoke(app, base[:-4] + ["--out", str(tmp_path / "p")]).exit_code == 0   # no config
    assert (seen[-1].batch_size, seen[-1].seed, seen[-1].n_images) == (128, 0, 500)          # the defaults


# ------------------------------------------------------------------ 4. --out at an existing file
OUT_COMMANDS = {
    **N_COMMANDS,
    "train": ["train", "--arch", "trustvision:smallcnn", "--data", "mnist"],
    "zeroshot": ["zeroshot", "--data", "mnist"],
}


@pytest.mark.parametrize("inside", [False, True])
@pytest.mark.parametrize("command", sorted(OUT_COMMANDS))
def test_out_at_an_existing_file_is_refused_before_any_work(command, inside, tmp_path):
    file = tmp_path / "results.txt"
    file.write_text("keep me")
    out = file / "sub" if inside else file
    line = one_line_error([*OUT_COMMANDS[command], "--out", str(out)])
    assert "--out" in line and str(out) in line and "missing.safetensors" not in line
    assert file.read_text() == "keep me"


# ------------------------------------------------------------------ 5. user strings printed literally
@pytest.mark.parametrize("bad", ["nowhere[/x]", "nowhere :boom: [bold]x[/bold] :ok:"])
def test_markup_and_emoji_in_a_data_spec_print_literally(bad, weights, tmp_path):
    line = one_line_error(["audit", "--model", str(weights), *MNIST_MODEL, "--data", bad,
                           "--out", str(tmp_path / "o")])
    assert bad in line


def test_markup_and_emoji_in_a_model_path_print_literally(tmp_path):
    bad = str(tmp_path / "m[/x] :ok: [bold].safetensors")
    line = one_line_error(["attack", "pgd", "--model", bad, "--data", "mnist", "--out", str(tmp_path / "o")])
    assert bad in line


def test_audit_with_markup_and_emoji_in_out_and_labels(weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                       # a short --out: the summary line is not wrapped
    out = "o8[/x] :boom:"
    labels = ",".join([":ok:", "[bold]one", "two[/x]", *map(str, range(3, 10))])
    args = ["audit", "--model", str(weights), *MNIST_MODEL, "--labels", labels, "--data", "mnist", "--n", "8",
            "--batch-size", "8", "--attacks", "fgsm", "--eps-linf", "0,0.1", "--eps-l2", "0", "--out", out]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, (r.output, r.exception)
    flat = "".join(r.output.split())
    assert "o8[/x]:boom:/results.json" in flat and "\N{COLLISION SYMBOL}" not in r.output
    assert (tmp_path / out / "report.html").is_file()


def test_summary_flags_and_progress_never_interpret_user_strings(monkeypatch):
    from trustvision.cli import console as cli_console
    buf = io.StringIO()
    monkeypatch.setattr(cli_console, "console", Console(file=buf, width=300, emoji=False, color_system=None))
    results = {"summary": {"clean_accuracy": 0.5},
               "sections": {"sec[/x]": {"flags": [{"severity": "warning", "code": "c:ok:",
                                                    "message": "class [bold]cat[/bold] :boom: is [/x] odd"}]}},
               "gates": [{"metric": "clean_accuracy", "threshold": 0.1, "value": 0.5, "passed": True}]}
    assert cli_console.print_summary(results, Path("o8[/x] :boom:")) == 0
    with cli_console.progress_bars() as progress:
        progress.task("UAP from folder[/x] :boom: [bold]", 1)(1)
    text = buf.getvalue()
    for literal in ("[sec[/x]]", "c:ok:", "class [bold]cat[/bold] :boom: is [/x] odd", "o8[/x] :boom:",
                    "UAP from folder[/x] :boom: [bold]"):
        assert literal in text, literal



def test_the_consoles_never_turn_codes_into_emoji():
    from trustvision.cli.console import console, err
    for c in (console, err):
        with c.capture() as cap:
            c.print("model :boom: label :ok:")
        assert "model :boom: label :ok:" in cap.get()


# ------------------------------------------------------------------ 6. SIGTERM
def test_sigterm_handler_is_not_installed_at_import_and_restored_after_a_command(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    import trustvision.cli.app  # noqa: F401  (already imported: importing must not install anything)
    assert signal.getsignal(signal.SIGTERM) is before
    one_line_error(["audit", "--model", "missing.safetensors", "--data", "mnist", "--out", str(tmp_path / "o")])
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_sigterm_prints_the_interrupted_line_exits_143_and_keeps_finished_sections(weights, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "trustvision", "audit", "--model", str(weights), *MNIST_MODEL, "--data", "mnist",
           "--n", "400", "--attacks", "pgd,cw,deepfool", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 180
        while not (out / "sections" / "clean.json").exists():     # the clean section is finished
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the clean section did not finish in 180 s"
            time.sleep(0.2)
        time.sleep(1.0)                                              # well inside the (minutes-long) robustness
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, (stdout, stderr)
    assert "interrupted: finished sections are kept; re-run the same command to resume" in stderr
    assert "Traceback" not in stderr and (out / "sections" / "clean.json").is_file()
    assert not (out / "results.json").exists()                     # the audit was stopped, not finished


# ------------------------------------------------------------------ 7. consent flags
def _evil(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "ran.txt"
    evil = tmp_path / "evil.py"
    evil.write_text("import pathlib\nimport torch.nn as nn\n\n\ndef make():\n"
                    f"    pathlib.Path({str(marker)!r}).write_text('ran')\n"
                    "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n")
    return evil, marker


def test_module_factory_needs_trust_code(tmp_path):
    evil, marker = _evil(tmp_path)
    common = ["attack", "fgsm", "--model", f"{evil}:make", "--num-classes", "10", "--channels", "1",
              "--input-size", "28x28", "--data", "mnist", "--n", "4", "--out", str(tmp_path / "o")]
    line = one_line_error(common)
    assert "--trust-code" in line and "evil.py" in line and not marker.exists()
    r = runner.invoke(app, [*common, "--trust-code"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert marker.exists() and (tmp_path / "o" / "fgsm.json").is_file()


def test_uap_transfer_model_needs_trust_code_before_any_work(tmp_path):
    evil, marker = _evil(tmp_path)
    line = one_line_error(["uap", "--model", str(tmp_path / "missing.safetensors"), "--eval", "mnist",
                           "--also", f"{evil}:make", "--out", str(tmp_path / "o")])
    assert "--trust-code" in line and "evil.py" in line and "missing.safetensors" not in line
    assert not marker.exists()


@pytest.mark.parametrize("text", ["trust_code = true\n", "trust_pickle = true\n", "[uap]\ntrust_code = true\n",
                                  "[robustness]\ntrust_code = true\n"])
def test_a_config_file_cannot_grant_trust(text, tmp_path):
    toml = tmp_path / "audit.toml"
    toml.write_text(text)
    line = one_line_error(["audit", "--model", "missing.safetensors", "--data", "mnist", "--config", str(toml)])
    assert "unknown key(s) ['trust_" in line


def test_max_pixels_option_reaches_the_data_loader(weights, tmp_path):
    from PIL import Image
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        Image.new("L", (40, 40), 128).save(tmp_path / "imgs" / c / f"{c}.png")
    args = ["audit", "--model", str(weights), *MNIST_MODEL, "--data", str(tmp_path / "imgs"),
            "--out", str(tmp_path / "o")]
    line = one_line_error([*args, "--max-pixels", "1000"])
    assert "--max-pixels" in line and ".png" in line and "1,000" in line
    line = one_line_error([*args, "--max-pixels", "0"])
    assert "--max-pixels" in line


def test_trust_code_reaches_the_uap_section_only_from_the_flag(weights, tmp_path, monkeypatch):
    import trustvision.evaluation.sections as sections
    seen = []

    def fake_uap_section(*a, trust_code=False, **kw):
        seen.append(trust_code)
        raise TrustVisionError("uap section reached")
    monkeypatch.setattr(sections, "uap_section", fake_uap_section)
    toml = tmp_path / "audit.toml"
    toml.write_text('sections = ["clean", "uap"]\nn_images = 8\n[uap]\ntransfer = ["evil.py:make"]\n')
    args = ["audit", "--model", str(weights), *MNIST_MODEL, "--data", "mnist", "--config", str(toml)]
    for extra in ([], ["--trust-code"]):
        r = runner.invoke(app, [*args, "--out", str(tmp_path / f"o{len(extra)}"), *extra])
        assert r.exit_code == 2 and _lines(r.output)[-1] == "error: uap section reached", r.output
    assert seen == [False, True]


# ------------------------------------------------------------------ --preset on attack and uap (issue 17)
def test_attack_preset_errors_are_one_line_before_any_work():
    common = ["--model", "missing.safetensors", "--data", "mnist"]
    assert "give an attack NAME or --preset" in one_line_error(["attack", *common])
    assert "--preset kotyan2022 runs the attack 'threshold', not 'pgd'" in one_line_error(
        ["attack", "pgd", "--preset", "kotyan2022", *common])
    assert "runs the attack 'pgd', not 'pgd-l2'" in one_line_error(["attack", "pgd-l2", "--preset", "pgd", *common])
    assert "--preset 'nope': unknown; choose from" in one_line_error(["attack", "--preset", "nope", *common])


@pytest.mark.slow
def test_attack_preset_option_runs_the_preset_as_the_positional_name_does(weights, tmp_path):
    import json
    common = [*MNIST_MODEL, "--model", str(weights), "--data", "mnist", "--n", "4", "--opt", "pop_size=8",
              "--opt", "generations=2", "--opt", "max_threshold=15"]
    docs = []
    for i, how in enumerate((["--preset", "kotyan2022"], ["threshold", "--preset", "kotyan2022"], ["kotyan2022"])):
        r = runner.invoke(app, ["attack", *how, *common, "--out", str(tmp_path / str(i))])
        assert r.exit_code == 0, (how, r.output)
        docs.append(json.loads(r.stdout))
        assert (tmp_path / str(i) / "kotyan2022.npz").is_file()
    described = docs[0]["attack"]
    assert (described["attack"], described["optimizer"], described["quantize"], described["minimal"]) == \
        ("threshold", "cmaes", True, True) and described["pop_size"] == 8
    assert docs[0] == docs[1] == docs[2]                       # same seed, same attack: the same numbers


@pytest.mark.slow
def test_uap_preset_hirano2020_reaches_the_section(weights, tmp_path):
    import json
    r = runner.invoke(app, ["uap", "--preset", "hirano2020", *MNIST_MODEL, "--model", str(weights), "--eval", "mnist",
                            "--source", "mnist", "--n", "16", "--n-source", "16", "--max-passes", "1", "--sweep", "",
                            "--out", str(tmp_path / "u")])
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "u" / "results.json").read_text())["sections"]["uap"]["config"]
    assert (cfg["step_rule"], cfg["stop_rate"]) == ("art", 1.0)
    assert "--preset 'nope': unknown" in one_line_error(["uap", "--preset", "nope", *MNIST_MODEL, "--model",
                                                         str(weights), "--eval", "mnist", "--out", str(tmp_path / "w")])
    assert "--preset hirano2020 uses --method fgsm, not sgd" in one_line_error(
        ["uap", "--preset", "hirano2020", "--method", "sgd", *MNIST_MODEL, "--model", str(weights), "--eval", "mnist",
         "--out", str(tmp_path / "v")])
