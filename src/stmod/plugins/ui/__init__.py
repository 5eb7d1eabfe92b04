"""``stmod-run ui``: a browser page from a clip to an edit (extra ``stmod[ui]``; see docs/ui.md).

:mod:`.state` holds the pure parts (annotations → job mapping, drawing, prompt checks), :mod:`.clips`
the stored clips and the examples, :mod:`.app` what each action does (:class:`~.app.UiApp`); none
imports Gradio. :mod:`.page` lays out the page and is imported only once Gradio is known to be installed.
"""
