FROM busybox
   run apt-get update && \
# a comment inside the continuation
    apt-get install -y \

      curl
Cmd echo done \
