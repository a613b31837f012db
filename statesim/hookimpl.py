"""The marker plugins use on their hook functions: ``@statesim.hookimpl``."""
import pluggy

#: Marks a plugin's hook functions (pluggy's marker for the ``statesim`` project); ``tryfirst=True`` or
#: ``trylast=True`` order the merge of its registrations among the other plugins'.
#:
#: >>> import statesim
#: >>> from statesim.builtin.cells import GRUCell
#: >>> @statesim.hookimpl
#: ... def statesim_cells():
#: ...     return [statesim.Registration("my_gru", GRUCell, GRUCell.Params, "a GRU")]
#: >>> import types, pluggy
#: >>> from statesim import hookspecs
#: >>> manager = pluggy.PluginManager("statesim")      # what build_plugin_host does with an entry point's module
#: >>> manager.add_hookspecs(hookspecs)
#: >>> manager.register(types.SimpleNamespace(statesim_cells=statesim_cells), name="mine")
#: 'mine'
#: >>> [record.name for records in manager.hook.statesim_cells() for record in records]
#: ['my_gru']
hookimpl = pluggy.HookimplMarker("statesim")
