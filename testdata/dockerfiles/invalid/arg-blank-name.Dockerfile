FROM busybox
ARG =value
