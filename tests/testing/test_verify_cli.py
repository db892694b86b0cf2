"""``mdpalign verify``: exit 0 when every expectation holds, 1 when one fails, 2 (one line, no traceback) for a
usage error."""
import json
import textwrap

import pytest

from mdpalign.cli import main

LOSSES = textwrap.dedent('''
    import torch.nn.functional as F

    def good(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
        margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
        return -F.logsigmoid(0.1 * margin)

    def no_ref(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
        return -F.logsigmoid(0.1 * (policy_chosen_logps - policy_rejected_logps))

    def mean(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
        return good(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps).mean()

    NOT_CALLABLE = 3
''')


@pytest.fixture
def here(tmp_path, monkeypatch):
    (tmp_path / "cli_losses.py").write_text(LOSSES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_pass_and_fail_exit_codes(here, capsys):
    code, out, _ = _run(capsys, "verify", "cli_losses:good", "--kind", "preference", "--beta", "0.1",
                        "--expect", "kl_rl")
    assert code == 0 and out.startswith("OK:") and "reached" in out
    code, out, _ = _run(capsys, "verify", "cli_losses:no_ref", "--kind", "preference", "--expect", "kl_rl",
                        "--regime", "two_arm", "bt_all_pairs")
    assert code == 1 and out.startswith("FAILED:") and "missed" in out and "reproduce with" in out


def test_json_report(here, capsys):
    code, out, _ = _run(capsys, "verify", "cli_losses:good", "--kind", "preference", "--regime", "two_arm", "--json")
    data = json.loads(out)
    assert code == 0 and data["ok"] and data["regimes"][0]["status"] == "landed"
    assert data["regimes"][0]["distance_to"]["kl_rl"] <= data["regimes"][0]["tolerance"]


@pytest.mark.parametrize("argv, words", [
    (["cli_losses:mean", "--kind", "preference"], "reduces over the batch"),
    (["cli_losses:missing", "--kind", "preference"], "has no attribute"),
    (["no_such_module:f", "--kind", "preference"], "cannot import"),
    (["cli_losses", "--kind", "preference"], "module:function"),
    (["cli_losses:NOT_CALLABLE", "--kind", "preference"], "not a function"),
    (["cli_losses:good", "--kind", "preference", "--expect", "crlft"], "unknown optimum"),
    (["cli_losses:good", "--kind", "preference", "--regime", "all"], "unknown regime"),
    (["cli_losses:good", "--kind", "dpo"], "--kind must be one of"),
    (["cli_losses:good", "--kind", "preference", "--beta", "-1"], "beta"),
    (["cli_losses:good", "--kind", "preference", "--kl-in-reward"], "online-policy only"),
])
def test_usage_errors_are_one_line_exit_2(here, capsys, argv, words):
    code, out, err = _run(capsys, "verify", *argv)
    assert code == 2 and words in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("mdpalign verify: error:")


def test_expect_help_lists_exactly_the_named_optima():
    from mdpalign.cli.verify import _KINDS, EXPECT_HELP
    from mdpalign.testing.expectations import NAMED_OPTIMA

    parts = (part.split(":") for part in EXPECT_HELP.split(";"))
    listed = {k.strip(): [n.strip() for n in v.split(",")] for k, v in parts}
    assert {_KINDS[k]: v for k, v in listed.items()} == {k: list(v) for k, v in NAMED_OPTIMA.items()}
