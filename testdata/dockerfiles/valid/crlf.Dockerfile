FROM busybox
RUN echo a \
  b
ENV A=1 \
    B=2
