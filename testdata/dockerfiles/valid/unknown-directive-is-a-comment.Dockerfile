# unknown=value
# escape=`
FROM busybox
RUN echo one \
  two
