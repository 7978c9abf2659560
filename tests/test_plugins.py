"""Pass registry: built-ins, plugin files (--load-pass-plugin) and the circ.passes entry points."""

import importlib.metadata
import sys
import textwrap

import pytest

import circ
from circ import plugins
from circ.errors import PipelineError
from circ.pipeline import parse_pipeline

PLUGIN = '''
"""A plugin file as a user would write it."""
import attrs
from circ.passbase import Pass, PassResult, register_pass


@register_pass
class {cls}(Pass):
    """Renames nothing, loudly. Exact."""

    name = "{name}"
    level: int = attrs.field(default=1, metadata={{"help": "how loud"}})

    def run(self, graph, ctx):
        return PassResult(False)
'''



def test_builtins_are_registered():
    passes = circ.passes()
    assert {"dce", "fold_bn", "fold_constants", "remove_identity"} <= set(passes)
    assert list(passes) == sorted(passes)


def test_load_plugin_file(tmp_path, registry_snapshot):
    path = tmp_path / "loud.py"
    path.write_text(PLUGIN.format(cls="Loud", name="plugin_loud"))
    assert plugins.load_pass_plugin(path) == ["plugin_loud"]
    (loud,) = parse_pipeline("plugin_loud(level=3)")
    assert loud.level == 3 and type(loud).__name__ == "Loud"
    assert "plugin_loud" in circ.passes()


@pytest.mark.parametrize("source, message", [
    ("def broken(:\n", r"pass plugin .*bad\.py: cannot import \(line 1\): SyntaxError"),
    ("raise RuntimeError('no GPU here')\n", r"pass plugin .*bad\.py: cannot import \(line 1\): RuntimeError: no GPU here"),
    ("x = 1\nimport circ_no_such_module\n", r"pass plugin .*bad\.py: cannot import \(line 2\): ModuleNotFoundError"),
])
def test_broken_plugin_file_names_the_file(tmp_path, source, message, registry_snapshot):
    path = tmp_path / "bad.py"
    path.write_text(source)
    with pytest.raises(PipelineError, match=message):
        plugins.load_pass_plugin(path)


def test_missing_plugin_file(tmp_path):
    with pytest.raises(PipelineError, match=r"pass plugin .*nope\.py: no such file"):
        plugins.load_pass_plugin(tmp_path / "nope.py")


def entry_points_from(tmp_path, monkeypatch, module_source, value):
    """Install a module on sys.path and make importlib.metadata list it as a circ.passes plugin."""
    (tmp_path / "circ_test_ep_plugin.py").write_text(module_source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "circ_test_ep_plugin", raising=False)
    entry = importlib.metadata.EntryPoint(name="quiet", value=value, group=plugins.ENTRY_POINT_GROUP)

    def fake_entry_points(**selection):
        return [entry] if selection.get("group") == plugins.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(plugins.importlib.metadata, "entry_points", fake_entry_points)
    monkeypatch.setattr(plugins, "_loaded_entry_points", False)


def test_entry_point_naming_a_class(tmp_path, monkeypatch, registry_snapshot):
    # The class is defined without @register_pass: the entry point alone registers it.
    source = textwrap.dedent('''
        import attrs
        from circ.passbase import Pass, PassResult

        @attrs.define
        class Quiet(Pass):
            """Does nothing. Exact."""
            name = "ep_quiet"

            def run(self, graph, ctx):
                return PassResult(False)
    ''')
    entry_points_from(tmp_path, monkeypatch, source, "circ_test_ep_plugin:Quiet")
    assert "ep_quiet" in circ.passes()
    assert parse_pipeline("ep_quiet")[0].to_text() == "ep_quiet"


def test_entry_point_naming_a_module(tmp_path, monkeypatch, registry_snapshot):
    entry_points_from(tmp_path, monkeypatch, PLUGIN.format(cls="Loud2", name="ep_loud"), "circ_test_ep_plugin")
    assert "ep_loud" in circ.passes()


def test_broken_entry_point_is_named(tmp_path, monkeypatch, registry_snapshot):
    entry_points_from(tmp_path, monkeypatch, "raise ImportError('needs torch 9')\n", "circ_test_ep_plugin")
    with pytest.raises(PipelineError, match="entry point 'quiet' .*circ_test_ep_plugin.*needs torch 9"):
        circ.passes()
