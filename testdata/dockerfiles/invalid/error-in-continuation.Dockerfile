FROM busybox
RUN echo a && \
    echo b
COPY \
   --chmod \
   a b
