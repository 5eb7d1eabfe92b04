"""``stmod-run ui``: a browser page from a clip to an edit (extra ``stmod[ui]``; see docs/ui.md).

:mod:`.state` holds the pure parts (annotations → job mapping, drawing, prompt checks) and imports no
Gradio; :mod:`.app` builds the page and is imported only once Gradio is known to be installed.
"""
