"""The project dashboard the manager serves under `/ui`.

`sessions`: logins behind an opaque cookie, with CSRF tokens; `views`: what a page shows of a
project (pure functions of the stored record); `routes`: the pages, htmx fragments and the
cancel action, under a strict Content-Security-Policy. The JavaScript (`static/dashboard.js`)
draws the round charts with uPlot and shows the logs, reading the JSON API. htmx and uPlot are
vendored in `static/vendor/` (no CDN, no build step).
"""
