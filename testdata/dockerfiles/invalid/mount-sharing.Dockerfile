FROM busybox
RUN --mount=type=cache,target=/x,sharing=everyone true
