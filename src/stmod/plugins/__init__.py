"""Plugin system of stmod.

Third-party plugins are modules registered under the ``stmod`` entry-point group; a package needs
only this in its ``pyproject.toml``::

    [project.entry-points.stmod]
    my-plugin = "my_package.plugin"

and hook implementations in that module::

    from stmod import hookimpl

    @hookimpl
    def stmod_register_blenders(register):
        register.add("my-blend", MyBlender, summary="Keeps the background untouched")

See :mod:`stmod.plugins.hookspecs` for every hook and ``docs/writing_plugins.md`` for a walk-through.
"""
