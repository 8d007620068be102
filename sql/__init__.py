"""The tracking schema as numbered migrations, sql/<backend>/NNN_<what>.sql, applied in order by init-db.

This folder is shipped inside the package as ``legampi.sql`` (setup.cfg maps it with package_dir), so
an installed legampi (a wheel, ``pip install --user``) reads it with importlib.resources; a source
checkout reads it here. It holds no code.
"""
