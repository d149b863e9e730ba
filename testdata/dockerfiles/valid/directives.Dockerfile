# syntax=docker/dockerfile:1
# ESCAPE = `
# check=skip=JSONArgsRecommended;error=true
FROM busybox
RUN echo one `
    two
COPY a\b c:\dest
