"""The widget panel: explicit widgets whose changed values override %config for later cells, headless."""
from __future__ import annotations

from magic_helpers import children

from ptjupyter.widgets import Panel, panel  # noqa: F401 - panel() is tested below


def dry(ip, line=""):
    ip.run_cell_magic("pytorch_elastic", "--dry-run " + line, "1")
    return ip.magics_manager.registry["PytorchElastic"].last_plan


def test_line_magic_builds_the_panel_with_current_values(ip, magics):
    ip.run_line_magic("config", "PytorchElastic.nproc_per_node = 3")
    p = ip.run_line_magic("pytorch_elastic_widgets", "")
    assert isinstance(p, Panel) and magics.panel is p
    assert (p.nnodes.value, p.nproc_per_node.value, p.max_restarts.value, p.target.value) == ("1", 3, 0, "local")
    assert p.namespace.value == "" and p.image.value == ""  # empty: the kubeconfig context's namespace
    assert magics.widget_overrides == {}  # showing values is not overriding them
    bundle = p._repr_mimebundle_()
    assert bundle["text/plain"].startswith("pytorch_elastic panel:")
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_changed_values_override_config_but_not_flags(ip, magics, capsys):
    ip.run_line_magic("config", "PytorchElastic.nproc_per_node = 3")
    p = magics.pytorch_elastic_widgets()
    p.nproc_per_node.value = 2
    p.max_restarts.value = 1
    assert magics.widget_overrides == {"nproc_per_node": 2, "max_restarts": 1}
    plan = dry(ip)
    assert (plan.nproc_per_node, plan.sources["nproc_per_node"]) == (2, "widget panel")
    assert (plan.max_restarts, plan.sources["max_restarts"]) == (1, "widget panel")
    plan = dry(ip, "--nproc-per-node 4")
    assert (plan.nproc_per_node, plan.sources["nproc_per_node"]) == (4, "cell flags")
    assert "nproc_per_node=2" in p.text()
    p.reset()
    assert magics.widget_overrides == {} and p.nproc_per_node.value == 3


def test_bad_value_shows_one_line_in_the_panel_and_is_not_applied(ip, magics):
    p = magics.pytorch_elastic_widgets()
    p.nproc_per_node.value = 2
    before = children()
    p.nproc_per_node.value = 0  # no traceback: the error is shown in the panel
    assert p.error and "nproc_per_node=0 is not accepted" in p.error and "(from widget panel)" in p.error
    assert "\n" not in p.error and "nproc_per_node=0" in p.message.value
    assert magics.widget_overrides == {"nproc_per_node": 2}  # the last valid values stay in force
    assert dry(ip).nproc_per_node == 2 and children() == before
    p.nproc_per_node.value = 2
    assert p.error is None
    p.nnodes.value = "2"  # several nodes need the k8s target
    assert "k8s" in p.error
    p.target.value = "k8s"  # now nnodes=2 is valid: both apply
    p.nproc_per_node.value = 1
    assert p.error is None and magics.widget_overrides["nnodes"] == 2 and magics.widget_overrides["target"] == "k8s"
    p.namespace.value = "Not_Valid"
    assert "namespace='Not_Valid'" in p.error
    p.namespace.value = "team-a"
    p.image.value = "repo/train:1"
    assert p.error is None
    assert magics.widget_overrides["namespace"] == "team-a" and magics.widget_overrides["image"] == "repo/train:1"
