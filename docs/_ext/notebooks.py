"""MkDocs hook: publish the repository's notebooks without copying them into docs/.

Every ``notebooks/*.ipynb`` file becomes the site file ``notebooks/<name>.ipynb``, read
from its place in the repository, so the navigation can list it and mkdocs-jupyter can
render it like a notebook kept in ``docs/``.
"""

from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File


# Run before the plugins' own ``on_files`` (mkdocs-jupyter claims the notebooks there).
@event_priority(100)
def on_files(files, config):
    root = Path(config.config_file_path).parent
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        uri = f"notebooks/{path.name}"
        if files.get_file_from_path(uri) is None:
            # A file of the repository root, so that its source path is the notebook itself.
            files.append(File(uri, str(root), config.site_dir, config.use_directory_urls))
    return files
