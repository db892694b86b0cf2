"""The pytest plugin: run in a child pytest with ``-p no:mdpalign -p mdpalign.testing.plugin`` (the first blocks the
entry point once mdpalign is installed with it, so the module is registered exactly once either way)."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

USER_TESTS = textwrap.dedent('''
    import torch.nn.functional as F

    def my_dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
        margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
        return -F.logsigmoid(0.1 * margin)

    def no_ref(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
        return -F.logsigmoid(0.1 * (policy_chosen_logps - policy_rejected_logps))

    def test_reaches(assert_reaches, bt_all_pairs_problem, mdpalign_problem):
        r = assert_reaches(my_dpo, bt_all_pairs_problem, "kl_rl")
        assert r.status == "reached"
        assert assert_reaches(my_dpo, mdpalign_problem("preference", "deterministic"), "kl_rl").status == "no claim"

    def test_planted_bug(assert_reaches, two_arm_problem):
        assert_reaches(no_ref, two_arm_problem, "kl_rl")

    def test_unrelated():
        assert True
''')


def _pytest(tmp_path, *args):
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:mdpalign", "-p", "mdpalign.testing.plugin",
                           "-p", "no:cacheprovider", "-q", "--strict-markers", *args, str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_fixtures_assert_reaches_and_marker(tmp_path):
    res = _pytest(tmp_path, "-m", "mdpalign_loss")
    out = res.stdout
    assert res.returncode == 1, out
    assert "1 failed, 1 passed, 1 deselected" in out, out  # the marker selected the two checks only
    # the failure names the regime, the distance and the tolerance, and the problem
    assert "did not reach kl_rl in regime 'two_arm': missed, distance " in out and ", tolerance " in out, out
    assert "ref_policy = [[" in out


def test_plugin_import_loads_no_torch():
    code = "import sys, mdpalign.testing.plugin; assert 'torch' not in sys.modules, 'torch imported'"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert res.returncode == 0, res.stderr


def test_pyproject_registers_the_plugin_entry_point():
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        eps = tomllib.load(fh)["project"]["entry-points"]["pytest11"]
    assert eps == {"mdpalign": "mdpalign.testing.plugin"}
