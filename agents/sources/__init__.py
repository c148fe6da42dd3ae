"""Image sources: the watch folder (``folder``), the HTTP endpoint (``http``) and a camera or video
(``camera``). Each hands images to :class:`agents.pipeline.Pipeline` as :class:`agents.pipeline.Job` s."""
