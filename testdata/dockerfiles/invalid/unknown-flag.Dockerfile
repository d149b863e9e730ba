FROM busybox
COPY --user=me foo /tmp/
