"""`ophora review`: a blinded web app in which ophthalmologists rate generated (and real) surgery videos.

A study is a folder: `study.sqlite` (videos, criteria, raters with token hashes, per-rater random orders,
answers, the log of every accepted write) and `media/` (every video re-encoded alike, named by an opaque
id). Modules: config (the commands' settings), criteria, inputs (manifests and real-video folders),
transcode, study (schema, create/extend, raters), answers (reads and writes of one rater), server (the web
app), agreement (Krippendorff's alpha), summary (statistics, HTML and PNG plots), export.
"""
