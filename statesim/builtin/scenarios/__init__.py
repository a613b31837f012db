"""Built-in scenarios; each module is its own plugin (listed in ``statesim.plugin_manager.BUILTIN_PLUGINS``)."""
