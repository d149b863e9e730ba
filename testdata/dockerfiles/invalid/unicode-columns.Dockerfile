FROM busybox
LABEL é=1 ü=2 \
  x="ä b" ñ
